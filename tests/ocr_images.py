"""Deterministic images that carry known text, for OCR and lexical-search tests and benchmarks.

    import fetch, ocr_images                       # data/fetch.py, tests/ocr_images.py
    entries = ocr_images.render_set(dst, 200, fetch.fetch("photos"), fetch.fetch("fonts"))
    entries += ocr_images.screenshots(dst / "shots", fetch.fetch("fonts"))   # needs chromium

Every manifest entry is a dict: ``path``, ``lines`` (the exact text drawn), ``queries`` (strings
that occur in this image's text and in no other image's, also after `norm`), ``lang`` ("en" or
"zh"), ``kind`` ("rendered" or "screenshot") and how it was drawn (size, background, style,
angle, font, format), so that OCR failures can be split by cause. Only PIL and numpy here.
"""
from __future__ import annotations

import html
import random
import re
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def norm(text: str) -> str:
    """What lexical matching compares: NFKC, lower case, letters and digits only (OCR often drops
    or invents spaces, and reads '#' or '-' unreliably). mmsearch's lexical `compact`, less its
    accent folding (no accents here)."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).lower() if unicodedata.category(c)[0] in "LN")


def clashes(entries: list[dict]) -> list[tuple[str, str]]:
    """(query, other path) for every query that also occurs in another entry's text: such a query
    would not name one image. Empty for a good set, also one that joins several generated sets."""
    texts = [norm("\n".join(e["lines"])) for e in entries]
    return [(q, other["path"]) for e in entries for q in e["queries"]
            for other, t in zip(entries, texts) if other is not e and norm(q) in t]


# -- texts ------------------------------------------------------------------------------------
# A template is one line; the part in [brackets] becomes the image's query. Names and codes are
# made up, so that a query names its image only (checked, see `clashes`).
EN_TEMPLATES = [
    "[INVOICE {n4}]", "[INVOICE {n4}] due {day} {month}", "[Gate {L}{n2} closed]", "[Order #{L}{L}-{n4}] shipped",
    "Product code [{L}{L}{n3}-{n2}]", "[{street} Street {n3}]", "Flight [{L}{L} {n4} to {city}]",
    "[Room {n3}] {surname} & Partners", "[Ticket no. {n6}]", "Serial number [{L}{n5}{L}]",
    "[Table {n2} reserved for {surname}]", "[Wi-Fi password {word}{n4}]", "[Exit {n2} to {street} Road]",
    "[Platform {n1} for {city}]", "Parcel for [{first} {surname}]", "[{surname}'s Bakery] since {year}",
    "Lot [{L}{n4}] best before {day} {month}",
]
ZH_TEMPLATES = [
    "[发票号码 {n4}]", "[会议室{L}{n2}] 已预订", "[第{n2}号登机口] 已关闭", "[订单编号 {L}{L}{n5}]", "[{zh_street}路{n3}号]",
    "[{zh_city}站 {n1}号出口]", "[{zh_company}有限公司]", "[产品型号 {L}{L}-{n3}]", "[停车位 {L}{n3}] 仅限访客",
    "[{zh_phrase}]", "欢迎参加[{zh_city}{zh_event}]",
]
WORDS = {
    "L": list("ABCDEFGHJKLMNPRSTUVWXYZ"),  # no I or O, as on real codes
    "street": "Larkspur Wexcombe Brindle Okeford Tamsin Quillon Harrowgate Fenwick Maplethorpe Ashdown Corrigan "
              "Pellham Thornbury Vellacott Dunmere Ollerton Kestrel Ravensworth Stobart Yarrowby".split(),
    "city": "Lundholm Vesterby Amrelport Caskadia Brenvik Solmere Tarrowin Duskwater Ferrandel Ostravik".split(),
    "surname": "Okafor Lindqvist Marchetti Abernathy Kowalczyk Haverford Nakashima Delacroix Brannigan Szabo "
               "Ferreira Whitcombe Oyelaran Castellanos Thorvaldsen Petrakis".split(),
    "first": "Imogen Tobias Rosalind Casimir Henrike Lucian Margit Anselm Ottilie Severin".split(),
    "word": "bluefinch copperleaf saltmarsh tinderbox willowcat ironbark".split(),
    "month": "January February March April May June July August September October November December".split(),
    "zh_street": "长宁 青岚 梧桐 松柏 云溪 明珠 丰泽 金桂 望江 锦绣 翠湖 紫荆 银杏 凤鸣 石桥".split(),
    "zh_city": "临江 北湖 东川 西岭 南浦 清河 安澜 白沙 桐庐 溪口".split(),
    "zh_company": "星河科技 宏远物流 瑞丰食品 海川贸易 恒泰建材 嘉禾印刷 青松教育 明月文化 云帆旅行 金鼎餐饮".split(),
    "zh_event": "音乐节 读书会 马拉松 美食节 科技展 书画展".split(),
    "zh_phrase": "会议室预订 年度财务报告 消防通道禁止停车 员工餐厅菜单 新品上市八折优惠 访客登记处 图书馆自习室 "
                 "失物招领处 地下停车场入口 儿童游乐区 自助取票机 无障碍通道".split(),
}
# common second lines: shared by many images, like the boilerplate of real signs and receipts
FILLERS = {
    "en": ["Thank you for your order", "Please keep this receipt", "Printed on recycled paper",
           "All passengers please proceed", "Opening hours 9 to 5", "Handle with care", "Staff only beyond this point",
           "Visit us again soon", "Subject to availability", "Tickets are non-refundable"],
    "zh": ["谢谢惠顾", "请保留此收据", "欢迎光临", "营业时间九点至五点", "请勿吸烟", "小心轻放", "闲人免进", "本券不设找零"],
}


def _fill(template: str, rng: random.Random) -> tuple[str, list[str]]:
    def value(m: re.Match) -> str:
        key = m.group(1)
        if key[0] == "n":  # n4: a four-digit number without leading zero
            return str(rng.randrange(10 ** (int(key[1:]) - 1), 10 ** int(key[1:])))
        if key == "day":
            return str(rng.randint(1, 28))
        if key == "year":
            return str(rng.randint(1950, 2015))
        return rng.choice(WORDS[key])

    text = re.sub(r"\{(\w+)\}", value, template)
    return text.replace("[", "").replace("]", ""), re.findall(r"\[([^\]]+)\]", text)


def _texts(n: int, rng: random.Random, zh_share: float) -> list[tuple[str, list[str], list[str]]]:
    """n (lang, lines, queries), each query unique to its image, also against the fillers."""
    out, seen = [], []  # seen: normalised texts of the images so far
    for _ in range(n):
        lang = "zh" if rng.random() < zh_share else "en"
        while True:
            line, queries = _fill(rng.choice(ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES), rng)
            lines = [line]
            if rng.random() < 0.5:
                lines.insert(rng.randrange(2), rng.choice(FILLERS[lang]))
            text = norm("\n".join(lines))
            if not any(norm(q) in t for q in queries for t in seen) and not any(
                    norm(q) in text for _, _, qs in out for q in qs):
                break
        out.append((lang, lines, queries))
        seen.append(text)
    return out


# -- drawing ----------------------------------------------------------------------------------
SIZES = [12, 14, 16, 18, 20, 24, 28, 32, 40, 48, 56, 64, 72]
TEXT_PHOTOS = {"page.png"}  # a scanned page: its own text would muddle the ground truth


def _luminance(rgb) -> np.ndarray:
    """WCAG relative luminance of sRGB values (0..255, last axis RGB)."""
    c = np.asarray(rgb, dtype=np.float64) / 255
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return c @ [0.2126, 0.7152, 0.0722]


def _contrast(a: float, b: float) -> float:
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


def _colour_against(lums: list[float], rng: random.Random, target: float) -> tuple[tuple[int, int, int], float]:
    """A random text colour with at least `target` contrast to every luminance given (often not
    black or white); black or white, whichever is better, when none is found."""
    best = None
    for _ in range(200):
        c = tuple(rng.randrange(256) for _ in range(3))
        ratio = min(_contrast(_luminance(c), lum) for lum in lums)
        if ratio >= target:
            return c, ratio
    for c in ((0, 0, 0), (255, 255, 255)):
        ratio = min(_contrast(_luminance(c), lum) for lum in lums)
        if best is None or ratio > best[1]:
            best = (c, ratio)
    return best


def _theme_colour(rng: random.Random, dark: bool) -> tuple[int, int, int]:
    return tuple(rng.randrange(0, 110) if dark else rng.randrange(150, 256) for _ in range(3))


def _background(kind: str, size: tuple[int, int], rng: random.Random, photos: list[Path]) -> tuple[Image.Image, str]:
    w, h = size
    if kind == "photo":
        src = rng.choice(photos)
        img = Image.open(src).convert("RGB")
        # a crop with the canvas's aspect ratio, 50-100 % of the largest that fits, scaled to the canvas
        scale = rng.uniform(0.5, 1.0) * min(img.width / w, img.height / h)
        cw, ch = int(w * scale), int(h * scale)
        x, y = rng.randint(0, img.width - cw), rng.randint(0, img.height - ch)
        return img.crop((x, y, x + cw, y + ch)).resize(size, Image.BICUBIC), f"photo:{src.stem}"
    dark = rng.random() < 0.35
    a = _theme_colour(rng, dark)
    if kind == "plain":
        return Image.new("RGB", size, a), "plain"
    b = _theme_colour(rng, dark)  # same lightness band, so one text colour contrasts with both ends
    t = {"horizontal": np.linspace(0, 1, w)[None, :].repeat(h, 0), "vertical": np.linspace(0, 1, h)[:, None].repeat(w, 1),
         "diagonal": (np.add.outer(np.arange(h), np.arange(w)) / (w + h - 2))}[rng.choice(["horizontal", "vertical", "diagonal"])]
    arr = np.asarray(a, float) * (1 - t[..., None]) + np.asarray(b, float) * t[..., None]
    return Image.fromarray(arr.round().astype(np.uint8)), "gradient"


def _masks(lines: list[str], font: ImageFont.FreeTypeFont, size: int, stroke: int, align: str) -> tuple[Image.Image, ...]:
    """Greyscale masks (text, outline, band) of the text block, unrotated."""
    widths = [font.getbbox(line, stroke_width=stroke)[2] for line in lines]
    pad, line_h = size // 2 + stroke, int(size * 1.4)
    box = (max(widths) + 2 * pad, line_h * len(lines) + 2 * pad - (line_h - size))
    text, outline = Image.new("L", box), Image.new("L", box)
    for i, (line, wd) in enumerate(zip(lines, widths)):
        xy = (pad + (max(widths) - wd) // 2 if align == "centre" else pad, pad + i * line_h)
        ImageDraw.Draw(text).text(xy, line, font=font, fill=255)
        if stroke:
            ImageDraw.Draw(outline).text(xy, line, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    return text, outline, Image.new("L", box, 255)


def render_set(dst: Path, n: int, photos_dir: Path | None, fonts_dir: Path, seed: int = 0,
               zh_share: float = 0.3) -> list[dict]:
    """Write n images with one or two lines of text each into dst (ocr_0000.png, ...) and return
    their manifest. Same arguments, same images (for the same PIL and fonts)."""
    rng = random.Random(seed)
    dst.mkdir(parents=True, exist_ok=True)
    latin = sorted(p.name for p in fonts_dir.glob("*.ttf") if not p.name.startswith("DroidSans"))  # no Latin glyphs
    cjk = fonts_dir / "wqy-microhei.ttc"
    if not latin or not cjk.exists():
        raise FileNotFoundError(f"{fonts_dir}: no fonts; run `python data/fetch.py fonts`")
    photos = sorted(p for p in (photos_dir.iterdir() if photos_dir else []) if p.name not in TEXT_PHOTOS)
    entries = []
    for i, (lang, lines, queries) in enumerate(_texts(n, rng, zh_share)):
        size = rng.choice(SIZES)
        if lang == "zh":  # the .ttc holds Micro Hei (0) and Micro Hei Mono (1)
            face = rng.randrange(2)
            font, font_name = ImageFont.truetype(str(cjk), size, index=face), f"{cjk.name}#{face}"
        else:
            font_name = rng.choice(latin)
            font = ImageFont.truetype(str(fonts_dir / font_name), size)
        bg_kind = rng.choice(["plain", "gradient", "photo"] if photos else ["plain", "gradient"])
        style = rng.choice(["band", "outline", "bare"]) if bg_kind == "photo" else "bare"
        stroke = max(1, size // 12) if style == "outline" else 0
        angle = rng.choice([-1, 1]) * rng.uniform(2, 10) if rng.random() < 0.25 else 0.0
        text, outline, band = (m.rotate(angle, Image.BICUBIC, expand=True)
                               for m in _masks(lines, font, size, stroke, rng.choice(["left", "centre"])))
        base = rng.choice([480, 640, 800, 960, 1280])
        w = max(base, text.width + 20)
        h = max(int(base * rng.choice([0.5625, 0.667, 0.75, 1.0])), text.height + 20)
        img, background = _background(bg_kind, (w, h), rng, photos)
        x, y = rng.randint(10, w - text.width - 10), rng.randint(10, h - text.height - 10)

        region = np.asarray(img.crop((x, y, x + text.width, y + text.height)))[np.asarray(text) > 0]
        lums = _luminance(region)
        if style == "band":  # a translucent box behind the text, as on captions and signs
            shade, alpha = rng.choice([0, 255]), rng.randint(150, 220)
            img.paste((shade,) * 3, (x, y), band.point([v * alpha // 255 for v in range(256)]))
            lums = lums * (1 - alpha / 255) + _luminance((shade,) * 3) * alpha / 255
        # WCAG AA contrast (4.5) to the light and dark ends of what lies under the text; on a photo
        # without a band only to its mean, as a designer judging by eye would (bare: the hard cases)
        ref = [float(lums.mean())] if style != "band" and bg_kind == "photo" else [float(np.percentile(lums, 5)), float(np.percentile(lums, 95))]
        colour, ratio = _colour_against(ref, rng, 4.5)
        if style == "outline":
            img.paste((255, 255, 255) if _luminance(colour) < 0.3 else (0, 0, 0), (x, y), outline)
        img.paste(colour, (x, y), text)

        fmt = "jpg" if rng.random() < (0.7 if bg_kind == "photo" else 0.3) else "png"
        path = dst / f"ocr_{i:04d}.{fmt}"
        if fmt == "jpg":
            img.save(path, quality=rng.randint(60, 92))
        else:
            img.save(path)
        entries.append({"path": str(path), "lines": lines, "queries": queries, "lang": lang, "kind": "rendered",
                        "size": size, "background": background, "style": style, "angle": round(angle, 1),
                        "font": font_name, "colour": colour, "contrast": round(ratio, 1), "format": fmt,
                        "width": w, "height": h})
    return entries


# -- screenshots ------------------------------------------------------------------------------
# Web pages as blocks (tag, text); [brackets] mark queries as above. "tr" cells split at "|".
PAGES = [
    ("light", 1280, 800, "Acme Office Supplies", [
        ("nav", "Home | Catalogue | Orders | Account"), ("h1", "[Invoice KV-88213]"),
        ("p", "Billed to Vellacott Joinery, 14 Mill Yard. Payment is due within 30 days."),
        ("tr", "Item|Qty|Price"), ("tr", "[Stapler model HX-204]|2|18.40"), ("tr", "Copy paper A4|10|42.00"),
        ("p", "Questions about this bill? Write to accounts and quote your customer number.")]),
    ("board", 1366, 768, "Departures", [
        ("h1", "Departures"), ("tr", "Time|Flight|Destination|Gate"), ("tr", "09:40|[ZQ 4417]|[Marrakesh]|C19"),
        ("tr", "10:05|LX 2210|Geneva|A04"), ("tr", "10:30|FR 9981|Tallinn|B11"), ("p", "Boarding closes 20 minutes before departure")]),
    ("light", 1024, 768, "Harrowgate Viaduct - Wikipedia", [
        ("nav", "Article | Talk | Read | Edit | View history"), ("h1", "[Harrowgate Viaduct]"),
        ("p", "The viaduct is a disused railway bridge of twenty-one brick arches spanning the Ouse valley."),
        ("p", "It was designed by [Josiah Pennington Crabtree] and opened to goods traffic in 1849."),
        ("h2", "History"), ("p", "After the line closed the structure was listed and later restored by volunteers.")]),
    ("mail", 1280, 800, "Inbox", [
        ("nav", "Inbox | Starred | Sent | Drafts | Spam"), ("h1", "[Quarterly budget for Tamsin Valley depot]"),
        ("p", "From: Henrike Abernathy to the finance team"),
        ("p", "Hi all, attached is the draft. Please check the [forklift lease renewal] figures before Friday."),
        ("p", "Thanks, Henrike")]),
    ("dark", 1280, 800, "Settings", [
        ("nav", "General | Privacy | Backups | Devices"), ("h1", "Backups"),
        ("p", "Last successful backup: yesterday at 23:10"), ("p", "[Backup target nas-ostravik-02]"),
        ("button", "Run backup now"), ("p", "Encrypted with the passphrase stored in your password manager.")]),
    ("light", 1280, 800, "临江新闻网", [
        ("nav", "首页 | 本地 | 财经 | 体育 | 天气"), ("h1", "[青岚湖湿地公园今日开放]"),
        ("p", "记者从市园林局获悉，公园共设三个入口，市民可免费入园参观。"),
        ("p", "园内新建的[观鸟长廊全长八百米]，沿途设有多处休息点。")]),
    ("shop", 1024, 768, "星河商城", [
        ("nav", "首页 | 家电 | 数码 | 购物车"), ("h1", "[星河牌智能电饭煲]"), ("p", "限时特价 三百九十九元"),
        ("p", "订单号 [QH20240817]"), ("button", "立即购买")]),
    ("docs", 1280, 800, "frobnicator documentation", [
        ("nav", "Guide | Reference | Changelog"), ("h1", "[Configuring the frobnicator daemon]"),
        ("p", "Edit the configuration file, then reload the shards without a restart:"),
        ("pre", "[frobctl --reload-shards]"), ("p", "The daemon logs each reload to the system journal.")]),
    ("menu", 800, 1000, "Okeford Lane Bistro", [
        ("h1", "[Okeford Lane Bistro]"), ("h2", "Today's menu"), ("li", "[Smoked beetroot tartine]"),
        ("li", "Roast squash soup with sage"), ("li", "[Brindleford lamb hotpot]"), ("li", "Apple crumble and custard"),
        ("p", "Please tell us about any allergies.")]),
    ("poster", 1280, 800, "Autumn concerts", [
        ("h1", "[Lindqvist String Quartet]"), ("h2", "Autumn recital at the Corn Exchange"),
        ("p", "Works by Haydn, Janacek and Schubert. Doors open at seven."), ("button", "Book tickets")]),
    ("dark", 1366, 768, "Monitoring", [
        ("nav", "Overview | Alerts | Hosts | Reports"), ("h1", "Alerts"),
        ("tr", "Severity|Host|Message"), ("tr", "critical|rack-7|[Server room Q7 temperature above limit]"),
        ("tr", "warning|db-2|Disk usage at 81 percent"), ("p", "2 open alerts, last update a minute ago")]),
    ("light", 1280, 800, "会议室预约系统", [
        ("nav", "预约 | 我的预约 | 帮助"), ("h1", "[东川大厦三楼会议室]"), ("tr", "时间|会议|预约人"),
        ("tr", "上午十点|[新员工入职培训]|王晓明"), ("tr", "下午两点|项目周例会|李静"), ("p", "如需取消请提前一小时操作。")]),
    ("mail", 412, 892, "Messages", [
        ("h1", "Messages"), ("p", "Ottilie: the key is under the blue flowerpot"),
        ("p", "Ottilie: [meet at Dunmere ferry terminal] at noon"), ("p", "You: see you there")]),
]
THEMES = {  # page background, text colour, accent (headings, header bar)
    "light": ("#ffffff", "#202124", "#1a0dab"), "board": ("#101418", "#ffd24a", "#ffd24a"),
    "mail": ("#f6f8fc", "#1f1f1f", "#0b57d0"), "dark": ("#1e1e1e", "#d4d4d4", "#4fc1ff"),
    "shop": ("#fff7f0", "#333333", "#e4393c"), "docs": ("#ffffff", "#24292f", "#0969da"),
    "menu": ("#f4ecd8", "#3b2f2f", "#7a3e1d"), "poster": ("#2b1d4e", "#f2e9ff", "#ffb454"),
}


def _page_html(title: str, theme: str, blocks: list[tuple[str, str]], fonts_dir: Path) -> str:
    bg, fg, accent = THEMES[theme]
    # fonts from the fetched set, not the system's: the same glyphs everywhere, and CJK at all
    # (Droid: Chromium rejects Micro Hei's .ttc; Droid has no Latin, so it comes second)
    faces = "".join(f"@font-face{{font-family:{fam};src:url('{(fonts_dir / f).as_uri()}')}}"
                    for fam, f in (("mmSans", "LiberationSans-Regular.ttf"), ("mmSerif", "DejaVuSerif.ttf"),
                                   ("mmMono", "DejaVuSansMono.ttf"), ("mmCJK", "DroidSansFallbackFull.ttf")))
    body_font = "mmSerif" if theme in ("menu", "poster") else "mmSans"
    css = (f"{faces} body{{margin:0;background:{bg};color:{fg};font:16px {body_font},mmCJK}}"
           f"nav{{background:{accent};color:{bg};padding:10px 24px;font-size:14px}} main{{padding:8px 24px}}"
           f"h1{{color:{accent};font-size:30px}} h2{{font-size:21px}} table{{border-collapse:collapse;margin:8px 0}}"
           f"td{{border:1px solid {accent};padding:6px 14px}} pre{{font:15px mmMono;background:rgba(128,128,128,.15);padding:10px}}"
           f"button{{font:15px {body_font},mmCJK;background:{accent};color:{bg};border:0;padding:8px 16px}}")
    parts, rows = [], []
    for i, (tag, text) in enumerate(blocks):
        t = html.escape(text.replace("[", "").replace("]", ""))
        if tag == "tr":
            rows.append(f"<tr data-i={i}>" + "".join(f"<td>{c}</td>" for c in t.split("|")) + "</tr>")
            continue
        if rows:
            parts.append("<table>" + "".join(rows) + "</table>")
            rows = []
        t = t.replace(" | ", "&nbsp;&nbsp;&nbsp;&nbsp;") if tag == "nav" else t
        parts.append(f"<ul><li data-i={i}>{t}</li></ul>" if tag == "li" else f"<{tag} data-i={i}>{t}</{tag}>")
    if rows:
        parts.append("<table>" + "".join(rows) + "</table>")
    nav = [p for p in parts if p.startswith("<nav")]
    main = "".join(p for p in parts if not p.startswith("<nav"))
    return f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{css}</style>{''.join(nav)}<main>{main}</main>"


def screenshots(dst: Path, fonts_dir: Path, pages: list = PAGES) -> list[dict]:
    """Screenshots of small web pages in headless Chromium (Debian chromium + chromium-driver),
    with a manifest as `render_set`'s; lines are the blocks visible in the window."""
    import shutil
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    dst.mkdir(parents=True, exist_ok=True)
    pages_dir = Path(tempfile.mkdtemp())  # not in dst: the HTML is no part of the image set
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--force-device-scale-factor=1", "--allow-file-access-from-files", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    entries = []
    try:
        for i, (theme, w, h, title, blocks) in enumerate(pages):
            page = pages_dir / f"page_{i:02d}.html"
            page.write_text(_page_html(title, theme, blocks, fonts_dir), encoding="utf-8")
            driver.set_window_size(w, h)
            # the window's outer size includes no browser chrome when headless, but make sure
            driver.set_window_size(w + w - driver.execute_script("return innerWidth"),
                                   h + h - driver.execute_script("return innerHeight"))
            driver.get(page.as_uri())
            driver.execute_script("return document.fonts.ready")
            visible = set(driver.execute_script(
                "return [...document.querySelectorAll('[data-i]')].filter(e => {const r = e.getBoundingClientRect();"
                " return r.top >= 0 && r.bottom <= innerHeight && r.right <= innerWidth}).map(e => +e.dataset.i)"))
            shot = dst / f"screen_{i:02d}.png"
            driver.save_screenshot(str(shot))
            shown = [t for j, (_, t) in enumerate(blocks) if j in visible]
            lines = [t.replace("[", "").replace("]", "").replace("|", " ") for t in shown]
            queries = [q for t in shown for q in re.findall(r"\[([^\]]+)\]", t)]
            tags = [tag for j, (tag, t) in enumerate(blocks) if j in visible for _ in re.findall(r"\[", t)]
            lang = "zh" if any("\u4e00" <= c <= "\u9fff" for c in title + "".join(lines)) else "en"
            entries.append({"path": str(shot), "lines": lines, "queries": queries, "lang": lang, "kind": "screenshot",
                            "background": f"page:{theme}", "style": "web", "angle": 0.0, "format": "png",
                            "query_tags": tags, "width": w, "height": h, "hidden_blocks": len(blocks) - len(shown)})
    finally:
        driver.quit()
        shutil.rmtree(pages_dir)
    return entries
