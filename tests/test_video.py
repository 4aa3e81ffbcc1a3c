"""Video: keyframes that know their shot, moment search with timestamps, and bad video files."""
from __future__ import annotations

import os
import random

import pytest
from PIL import Image
from videos import rotate_90, write_audio_only, write_empty_stream, write_video

SHOT_PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "horse.png"]


@pytest.fixture(scope="module")
def shots_video(photos, tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    shots = [(Image.open(photos / n), dur) for n, dur in zip(SHOT_PHOTOS, (3.0, 2.0, 9.0, 3.0))]
    bounds = write_video(d / "shots.mp4", shots, size=(320, 240))
    return d / "shots.mp4", bounds


def test_keyframes_follow_shots_and_fill_long_ones(shots_video):
    from mmsearch.media.video import keyframes

    path, bounds = shots_video
    ks = keyframes(str(path), max_gap=4.0)
    starts = sorted({round(k.start, 1) for k in ks})
    assert starts == [round(s, 1) for s, _ in bounds]  # every cut found, no false cut
    for s, e in bounds:
        inside = [k for k in ks if s - 1e-6 <= k.timestamp < e]
        assert inside, (s, e)
        assert all(abs(k.start - s) < 0.15 and abs(k.end - e) < 0.15 for k in inside)
        times = [s] + [k.timestamp for k in inside] + [e]
        assert max(b - a for a, b in zip(times, times[1:])) <= 4.0 + 0.5  # long shot filled
    assert len([k for k in ks if bounds[2][0] <= k.timestamp < bounds[2][1]]) >= 2


def test_crossfades_and_variable_frame_rate(photos, tmp_path):
    from mmsearch.media.video import keyframes

    shots = [(Image.open(photos / n), 3.0) for n in SHOT_PHOTOS[:3]]
    bounds = write_video(tmp_path / "fade.mkv", shots, crossfade=1.0)
    ks = keyframes(str(tmp_path / "fade.mkv"), max_gap=2.0)
    assert max(b.timestamp - a.timestamp for a, b in zip(ks, ks[1:])) <= 2.5  # no hole at the fades
    starts = sorted({k.start for k in ks})
    assert len(starts) == 3 and all(abs(s - b) < 0.6 for s, (b, _) in zip(starts, bounds))  # dissolves found
    write_video(tmp_path / "vfr.mp4", shots, pts_jitter=True)
    ks = keyframes(str(tmp_path / "vfr.mp4"))
    assert len({k.start for k in ks}) == 3 and all(k.start <= k.timestamp <= k.end for k in ks)


def test_text_to_moment_search_with_timestamps(cli, shots_video, photos):
    path, bounds = shots_video
    s = cli.json("index", str(path.parent))  # the default lite model
    assert s["new"] == 1 and not s["skipped"]
    for query, (start, end) in zip(["a cat", "a cup of coffee", "a rocket", "a horse"], bounds):
        hit = cli.json("search", query, "--type", "video", "-k", "1")[0]
        assert hit["kind"] == "video" and hit["path"] == str(path)
        assert start <= hit["timestamp"] < end and abs(hit["start"] - start) < 0.15, (query, hit)
    hits = cli.json("search", "a rocket", "-k", "10")
    shots = [(h["path"], h["start"]) for h in hits if h["kind"] == "video"]
    assert len(shots) == len(set(shots)) <= 3  # one moment per shot, at most --per-video 3
    assert len(cli.json("search", "a rocket", "--per-video", "1")) == 1
    human = cli("search", "a rocket", "-k", "1").stdout
    assert "shots.mp4 @ 00:00:0" in human and "(shot 00:00:05–00:00:14)" in human


def test_frame_command_and_image_to_video(cli, shots_video, photos, tmp_path):
    path, bounds = shots_video
    cli("index", str(path.parent))
    out = tmp_path / "f.png"
    cli("frame", str(path), "--at", "6.0", "-o", str(out))
    assert Image.open(out).size == (320, 240)
    hit = cli.json("search", "--image", str(out), "-k", "1")[0]
    assert hit["kind"] == "video" and bounds[2][0] <= hit["timestamp"] < bounds[2][1] and hit["score"] > 0.9
    hit = cli.json("search", "--image", str(path), "--at", "1.0", "-k", "1")[0]  # a video frame as the query
    assert hit["kind"] == "video" and hit["timestamp"] < bounds[0][1]
    r = cli("frame", str(tmp_path / "missing.mp4"), "--at", "1", "-o", str(out), ok=False)
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_real_clip(cli):
    import fetch

    clip = fetch.fetch("videos") / "bikes.mp4"
    cli("index", str(clip))  # lite: a random-weight model would call every frame a duplicate
    info = cli.json("info")
    assert info["files"]["video"] == 1 and info["items"]["video"] >= 3
    hits = cli.json("search", "--image", str(clip), "--at", "4.0", "--type", "video")
    assert hits and all(0 <= h["start"] <= h["timestamp"] <= h["end"] <= 10.1 for h in hits)


def test_bad_videos_are_skipped_with_reasons(cli, tiny_clip, shots_video, photos, tmp_path):
    path, _ = shots_video
    d = tmp_path / "bad"
    d.mkdir()
    data = path.read_bytes()
    # seeded: now and then os.urandom's bytes parsed as an audio-only stream ("no video stream")
    (d / "random.mp4").write_bytes(random.Random(0).randbytes(5000))
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    write_audio_only(d / "audio.mp4")
    write_empty_stream(d / "empty-stream.mp4")
    (d / "zero.webm").write_bytes(b"")
    write_video(d / "big.mkv", [(Image.open(photos / "coins.png"), 1.0)], size=(640, 480))
    rotate_90(path, d / "phone.mp4")
    s = cli.json("index", str(d), "--model", tiny_clip, "--max-pixels", "100000")
    reasons = {os.path.basename(x["path"]): x["reason"] for x in s["skipped"]}
    assert "readable video" in reasons.pop("random.mp4")
    assert "no video stream" in reasons.pop("audio.mp4")
    assert any(w in reasons.pop("empty-stream.mp4") for w in ("no video stream", "no decodable video frames"))
    assert reasons.pop("zero.webm")
    assert "too many pixels" in reasons.pop("big.mkv")
    # our MP4s keep their index (moov) at the end, so a file cut to a third has none: unreadable
    assert "not a readable video" in reasons.pop("truncated.mp4")
    assert not reasons, reasons
    assert s["new"] == 1  # phone.mp4

    from mmsearch.media.video import keyframes

    k = keyframes(str(d / "phone.mp4"))[0]
    assert k.image.size[0] < k.image.size[1]  # rotation applied: portrait


def test_changed_and_removed_videos(cli, tiny_clip, photos, tmp_path):
    d = tmp_path / "vids"
    d.mkdir()
    write_video(d / "a.mp4", [(Image.open(photos / "coffee.png"), 2.0)])
    cli("index", str(d), "--model", tiny_clip)
    write_video(d / "a.mp4", [(Image.open(photos / "coffee.png"), 2.0), (Image.open(photos / "rocket.jpg"), 2.0)])
    s = cli.json("index", str(d))
    assert (s["updated"], s["embedded"]) == (1, 1)
    assert {h["start"] for h in cli.json("search", "x", "--type", "video")} == {0.0, 2.0}
    os.remove(d / "a.mp4")
    assert cli.json("index", str(d))["removed"] == 1
    assert cli.json("search", "x", "--type", "video") == []


def test_a_video_with_undecodable_metadata_is_indexed(cli, tiny_clip, photos, tmp_path):
    """A title in Latin-1 where the container says UTF-8 (old muxers, mutated files) made PyAV's
    open fail with UnicodeDecodeError; the frames are fine, so the video must index."""
    import av

    path = tmp_path / "latin1.mkv"
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "Caf_QQ_ video"
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        picture = Image.open(photos / "coffee.png").convert("RGB").resize((64, 48))
        for _ in range(16):
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = path.read_bytes()
    assert data.count(b"_QQ_") == 1
    path.write_bytes(data.replace(b"_QQ_", b"\xe9\xe9\xe9\xe9"))
    s = cli.json("index", str(path), "--model", tiny_clip)
    assert s["new"] == 1 and s["skipped"] == [], s
    from mmsearch.media.video import frame_at

    assert frame_at(str(path), 1.0).size == (64, 48)
