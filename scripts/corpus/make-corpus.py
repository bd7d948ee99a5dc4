#!/usr/bin/env python3
"""Build the text corpus for the DSA lightning-indexer warm-up trainer (train + held-out split).

Sources are real long-form English text installed by Debian packages (texinfo manuals, HTML books and
manuals, Perl pods, plain-text books, man pages); see SOURCES below and docs/corpus.md.  Chat transcripts
sampled from the model itself (scripts/corpus/sample-chats.sh) are written straight into train/ and heldout/
as chat-NNNN.txt; this script leaves them alone and only lists them in the manifest.

Output (DIR = --out, $DSACHAT_CORPUS, or $XDG_CACHE_HOME/dsachat/corpus):
    DIR/train/NNNN-name.txt      training documents (UTF-8 plain text, paragraphs kept)
    DIR/heldout/NNNN-name.txt    held-out documents: never train on these
    DIR/MANIFEST.tsv             split, file, source, bytes, sha256 (one row per document, chats included)
    DIR/SOURCES.tsv              the Debian packages and versions the documents came from

The split is by source document and deterministic: a document (all the parts of it, when a long one is cut
into parts) is held out when sha256("dsachat-corpus-v1:" + its source id) falls in the lowest --heldout-frac,
and a few long documents from different source families are forced into held-out so that it always holds at
least --min-long-heldout documents of >= --long-bytes bytes.  Same installed packages -> byte-identical output.

Python 3 standard library only; needs groff (man pages) and pod2text (perl) for those sources.
"""

import argparse
import glob
import gzip
import hashlib
import html
import html.parser
import os
import re
import subprocess
import sys
import unicodedata

SALT = "dsachat-corpus-v1:"

# Debian packages the corpus draws on (installed by scripts/make-corpus.sh).  All exist in Debian 12
# (bookworm), checked with apt-cache policy.  Packages that are missing are skipped with a note.
PACKAGES = [
    "python3-doc", "python3.11-doc",          # Python documentation (HTML)
    "postgresql-doc-15",                      # PostgreSQL manual (HTML)
    "debian-handbook",                        # The Debian Administrator's Handbook (HTML book)
    "abs-guide",                              # Advanced Bash-Scripting Guide (HTML book)
    "git-doc",                                # Git manual pages and user manual (HTML)
    "perl-doc",                               # Perl documentation (pod)
    "debian-reference-en", "maint-guide", "developers-reference", "debian-policy", "doc-debian",
    "jargon-text",                            # The Jargon File (plain-text book)
    "bash-doc", "gnu-standards", "autoconf-doc", "libtool-doc", "gettext-doc", "r-doc-info",
    "guile-3.0-doc", "zsh-doc", "octave-doc", "maxima-doc", "sbcl-doc",   # texinfo manuals
    "manpages", "manpages-dev", "glibc-doc",  # man pages
]

# man pages: every /usr/share/man/manN page (not translations) of these packages, when installed.  (Not
# coreutils, findutils, grep, sed, tar, bash: their texinfo manuals are in the corpus and say more.)
MAN_PACKAGES = [
    "manpages", "manpages-dev", "glibc-doc", "util-linux", "make", "openssh-client", "apt", "dpkg", "man-db",
    "groff", "groff-base", "procps", "systemd", "e2fsprogs", "iproute2", "less", "vim-common", "cmake-data",
    "strace",
]

# info manuals that duplicate another source (HTML / text versions are used instead)
INFO_EXCLUDE = {"dir", "python3.11", "python3.12", "python3.13", "debian-policy", "developers-reference"}

PY_HTML = "/usr/share/doc/python3.11/html"
PY_SKIP = re.compile(r"^(genindex.*|py-modindex|search|contents|about|bugs|copyright|license|download|"
                     r"index|includes/.*|distutils/.*|install/.*)\.html$")

# HTML sources: (family, package, root, glob, skip-regex on the path relative to root)
HTML_SOURCES = [
    ("python", "python3.11-doc", PY_HTML, "**/*.html", PY_SKIP),
    ("postgres", "postgresql-doc-15", "/usr/share/doc/postgresql-doc-15/html", "*.html",
     re.compile(r"^(index|bookindex|.*-index|legalnotice|release-.*)\.html$")),
    ("handbook", "debian-handbook", "/usr/share/doc/debian-handbook/html/en-US", "*.html",
     re.compile(r"^(index|sect\.index.*|.*idm\d+.*)\.html$")),
    ("abs", "abs-guide", "/usr/share/doc/abs-guide/html", "*.html", re.compile(r"^(index)\.html$")),
    ("git", "git-doc", "/usr/share/doc/git-doc", "**/*.html", re.compile(r"^(index|RelNotes.*)\.html$")),
]

# plain-text sources: (family, package, path glob, skip-regex on the file name)
TEXT_SOURCES = [
    ("text", "debian-reference-en", "/usr/share/debian-reference/debian-reference.en.txt*", None),
    ("text", "maint-guide", "/usr/share/doc/maint-guide/maint-guide.en.txt*", None),
    ("text", "developers-reference", "/usr/share/developers-reference/developers-reference.txt*", None),
    ("text", "debian-policy", "/usr/share/doc/debian-policy/*.txt*", re.compile(r"^README")),
    ("text", "debian-policy", "/usr/share/doc/debian-policy/fhs/*.txt*", None),
    ("text", "doc-debian", "/usr/share/doc/debian/*.txt*", re.compile(r"^constitution\.1\.[0-6]\.")),
    ("text", "jargon-text", "/usr/share/jargon/*.txt*", None),
    ("text", "jargon-text", "/usr/share/doc/jargon-text/jargon*.txt*", None),
]

POD_DIRS = ["/usr/share/perl/*/pod"]
POD_SKIP = re.compile(r"^(perl\d*delta|perl5\d+delta|perltoc|perlartistic|perlgpl|perlapi|perlintern|"
                      r"perluniprops|perlmodlib)\.pod$")

# byte caps on the training documents of a family (the documents are ranked by their hash, so the cap
# keeps a deterministic pseudo-random subset); families not listed are uncapped.
TRAIN_CAPS = {
    "info": 18_000_000,
    "python": 4_500_000,
    "postgres": 3_500_000,
    "man": 3_000_000,
    "perl": 3_000_000,
    "git": 1_500_000,
}

ENV = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", MANWIDTH="80", GROFF_SGR="")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---- text utilities -------------------------------------------------------------------------------------

def read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return data


def decode(data):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_OVERSTRIKE = re.compile(r".\x08")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b\u00ad\ufeff]")


def normalise(text):
    """UTF-8 plain text: no overstrikes or control characters, no trailing blanks, one blank line at most
    between paragraphs, exactly one newline at the end."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    while "\x08" in text:
        new = _OVERSTRIKE.sub("", text)
        if new == text:
            text = text.replace("\x08", "")
            break
        text = new
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\xa0", " ").replace("\u2010", "-").replace("\u2212", "-")
    text = _CTRL.sub("", text)
    out, blank = [], True
    for line in text.split("\n"):
        line = line.expandtabs(8).rstrip()
        if not line:
            if not blank:
                out.append("")
            blank = True
            continue
        out.append(line)
        blank = False
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def dedent(text, n):
    """Remove up to n leading spaces from every line (man pages indent body text by 7, pod2text by 4)."""
    pat = re.compile(r"^ {1,%d}" % n, re.M)
    return pat.sub("", text)


def slug(s):
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", s).strip("-.")
    return s[:80] or "doc"


# ---- extractors -----------------------------------------------------------------------------------------

_NOTE1 = re.compile(r"\*[Nn]ote[ \n]+([^:*]+?)::")
_NOTE2 = re.compile(r"\*[Nn]ote[ \n]+([^:*]+?):[ \n]*(?:\([^)\n]*\))?[^.,:*]*?([.,])")
_IMAGE = re.compile(r"\x00\x08\[(?:image|index)[^\x00]*\x00\x08\]")


def info_to_text(raw):
    """Text of a texinfo .info file: node headers, menus, index nodes, tag tables dropped; cross
    references reduced to their label."""
    raw = _IMAGE.sub("", raw)
    nodes = raw.split("\x1f")
    out = []
    for node in nodes:
        node = node.lstrip("\n")
        if node.startswith("\x0c"):
            node = node[1:].lstrip("\n")
        head, _, body = node.partition("\n")
        if head.startswith(("Tag Table:", "Indirect:", "End Tag Table", "Local Variables:")):
            continue
        if not head.startswith("File:"):
            # the preamble before the first node: keep only when it is prose (it usually is a licence
            # blurb plus INFO-DIR-SECTION / START-INFO-DIR-ENTRY lines)
            if "START-INFO-DIR-ENTRY" in node or "INFO-DIR-SECTION" in node or "This is " in head:
                continue
            body = node
        m = re.search(r"^\* Menu:", body, re.M)
        if m:
            body = body[: m.start()]
        body = re.sub(r"\nLocal Variables:\n.*", "\n", body, flags=re.S)
        body = _NOTE1.sub(r"\1", body)
        body = _NOTE2.sub(r"\1\2", body)
        body = body.strip("\n")
        if body:
            out.append(body)
    return "\n\n".join(out)


def man_to_text(path):
    data = read_bytes(path)
    src = decode(data)
    if re.match(r"\s*\.so\s", src) or len(src.strip()) < 200:
        return ""  # a link to another page
    prog = [".ad l", ".nh", ""]
    try:
        r = subprocess.run(["groff", "-k", "-t", "-Tutf8", "-mandoc", "-rLL=78n", "-rLT=78n", "-rHY=0",
                            "-P-cbou"], input=("\n".join(prog) + src).encode("utf-8"), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env=ENV, timeout=120, cwd="/usr/share/man")
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = decode(r.stdout)
    lines = text.split("\n")
    # drop the running header (first line) and footer (last non-empty line)
    nonempty = [i for i, l in enumerate(lines) if l.strip()]
    if len(nonempty) >= 2:
        first, last = nonempty[0], nonempty[-1]
        if re.search(r"\(\w+\)\s*$", lines[first]):
            lines[first] = ""
        if re.search(r"\(\w+\)\s*$", lines[last]) or re.search(r"\d{4}", lines[last]):
            lines[last] = ""
    return dedent(normalise("\n".join(lines)), 7)


def pod_to_text(path):
    try:
        r = subprocess.run(["pod2text", "--utf8", "-w", "78", path], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env=ENV, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return dedent(normalise(decode(r.stdout)), 4)


SKIP_TAGS = {"script", "style", "head", "nav", "noscript", "form", "button", "select", "svg", "iframe",
             "object", "map"}
SKIP_CLASSES = {"related", "sphinxsidebar", "sphinxsidebarwrapper", "footer", "headerlink", "navheader",
                "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples", "breadcrumbs",
                "mobile-nav", "menu-wrapper", "docnav", "navigation", "nav", "copyright", "legalnotice",
                "titlepage-footer", "footnotes-nav", "nav-content", "highlight-none-nav", "searchbox",
                "toc-backref", "sidebar-nav"}
SKIP_IDS = {"sidebar", "footer", "banner", "title", "navigation", "breadcrumbs", "toc", "site-footer"}
BLOCK_TAGS = {"p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
              "li", "dl", "dt", "dd", "table", "tr", "blockquote", "hr", "figure", "figcaption",
              "caption", "address", "center", "body", "html", "tbody", "thead", "tfoot", "aside"}
VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "param", "source",
             "track", "wbr"}


class HTMLText(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks = []     # finished paragraphs (strings)
        self.buf = []        # inline text of the paragraph being built
        self.prefix = ""     # "- " for list items
        self.skip = []       # stack of (tag) while inside skipped elements; depth counts nesting
        self.skip_depth = 0
        self.pre = 0
        self.prebuf = []
        self.lists = []      # stack of [tag, counter] for ul / ol
        self.cell = 0        # depth inside td / th: block tags there do not break the row
        self.row_cells = 0

    def _skipping_start(self, tag, attrs):
        a = dict(attrs)
        if tag in SKIP_TAGS:
            return True
        cls = set((a.get("class") or "").lower().split())
        if cls & SKIP_CLASSES:
            return True
        if (a.get("id") or "") in SKIP_IDS or (a.get("role") or "") in ("navigation", "search", "banner"):
            return True
        return False

    def flush(self):
        s = re.sub(r"[ \t\n\r\f\v]+", " ", "".join(self.buf))
        s = "\n".join(part.strip() for part in s.split("\x01")).strip("\n ")
        self.buf = []
        if s:
            self.blocks.append((self.prefix + s, self.row_cells > 0))
            self.prefix = ""

    def handle_starttag(self, tag, attrs):
        if self.skip_depth:
            if tag == self.skip[-1] and tag not in VOID_TAGS:
                self.skip_depth += 1
            return
        if self._skipping_start(tag, attrs):
            if tag not in VOID_TAGS:
                self.skip.append(tag)
                self.skip_depth = 1
            return
        if tag == "pre":
            self.flush()
            self.pre += 1
            return
        if self.pre:
            if tag == "br":
                self.prebuf.append("\n")
            return
        if tag == "br":
            self.buf.append("\x01")
        elif tag in ("td", "th"):
            if self.row_cells:
                self.buf.append(" | ")
            self.row_cells += 1
            self.cell += 1
        elif self.cell and tag in BLOCK_TAGS and tag not in ("table", "tr", "tbody", "thead", "tfoot"):
            self.buf.append(" ")
        elif tag in BLOCK_TAGS:
            self.flush()
            if tag == "tr":
                self.row_cells = 0
            if tag in ("ul", "ol", "dl"):
                self.lists.append([tag, 0])
            elif tag == "li":
                if self.lists and self.lists[-1][0] == "ol":
                    self.lists[-1][1] += 1
                    self.prefix = "%d. " % self.lists[-1][1]
                else:
                    self.prefix = "- "
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and len(alt) > 3 and not alt.lower().endswith((".png", ".gif", ".svg")):
                self.buf.append(alt)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self.skip_depth:
            if tag == self.skip[-1]:
                self.skip_depth -= 1
                if not self.skip_depth:
                    self.skip.pop()
            return
        if tag == "pre" and self.pre:
            self.pre -= 1
            if not self.pre:
                s = "".join(self.prebuf).strip("\n")
                self.prebuf = []
                if s.strip():
                    self.blocks.append((s, False))
            return
        if self.pre:
            return
        if tag in ("td", "th"):
            self.cell = max(0, self.cell - 1)
            return
        if self.cell and tag not in ("table", "tr", "tbody", "thead", "tfoot"):
            if tag in BLOCK_TAGS:
                self.buf.append(" ")
            return
        if tag in BLOCK_TAGS:
            self.flush()
            if tag in ("ul", "ol", "dl") and self.lists:
                self.lists.pop()
            if tag in ("tr", "table"):
                self.row_cells = 0
                if tag == "table":
                    self.cell = 0

    def handle_data(self, data):
        if self.skip_depth:
            return
        if self.pre:
            self.prebuf.append(data)
        else:
            self.buf.append(data)

    def text(self):
        self.flush()
        out = []
        for i, (s, row) in enumerate(self.blocks):
            if i:
                out.append("\n" if row and self.blocks[i - 1][1] else "\n\n")
            out.append(s)
        return "".join(out)


def html_to_text(path):
    p = HTMLText()
    try:
        p.feed(decode(read_bytes(path)))
        p.close()
    except Exception as e:  # a malformed page: skip it
        log(f"  html: {path}: {e}")
        return ""
    return normalise(p.text())


def text_file(path):
    return normalise(decode(read_bytes(path)))


# ---- discovering sources --------------------------------------------------------------------------------

def dpkg_lists():
    """package -> list of its files (from /var/lib/dpkg/info/*.list)."""
    res = {}
    for f in sorted(glob.glob("/var/lib/dpkg/info/*.list")):
        name = os.path.basename(f)[:-5].split(":")[0]
        try:
            with open(f, encoding="utf-8", errors="replace") as fh:
                res.setdefault(name, []).extend(l.rstrip("\n") for l in fh)
        except OSError:
            pass
    return res


def dpkg_versions():
    ver, pkg, status = {}, None, ""
    try:
        with open("/var/lib/dpkg/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Package: "):
                    pkg = line[9:].strip()
                elif line.startswith("Status: "):
                    status = line
                elif line.startswith("Version: ") and pkg and "installed" in status and "not-installed" not in status:
                    ver[pkg] = line[9:].strip()
    except OSError:
        pass
    return ver


class Source:
    """One source document: may become several parts.  `load` returns its normalised text."""

    def __init__(self, family, key, pkg, name, load):
        self.family, self.key, self.pkg, self.name, self.load = family, key, pkg, name, load


def owner_map(lists):
    own = {}
    for pkg, files in lists.items():
        for f in files:
            if f.startswith(("/usr/share/info/", "/usr/share/man/")):
                own.setdefault(f, pkg)
    return own


def find_sources(lists):
    own = owner_map(lists)
    srcs = []

    # texinfo manuals: group the parts (foo.info.gz, foo.info-1.gz, ...) by their real path
    manuals = {}
    for dirpath, dirnames, filenames in os.walk("/usr/share/info"):
        dirnames.sort()
        for fn in sorted(filenames):
            m = re.match(r"^(.+?)\.info(?:-(\d+))?(?:\.gz)?$", fn)
            if not m:
                continue
            path = os.path.join(dirpath, fn)
            real = os.path.realpath(path)
            if not os.path.isfile(real):
                continue
            rm = re.match(r"^(.+?)\.info(?:-(\d+))?(?:\.gz)?$", os.path.basename(real))
            if not rm or rm.group(1) in INFO_EXCLUDE:
                continue
            gkey = os.path.join(os.path.dirname(real), rm.group(1))
            part = int(rm.group(2) or 0)
            pkg = own.get(path) or own.get(real) or "?"
            d = manuals.setdefault(gkey, {"parts": {}, "pkg": pkg})
            d["parts"][part] = real
            if d["pkg"] == "?":
                d["pkg"] = pkg
    for gkey in sorted(manuals):
        d = manuals[gkey]
        parts = [d["parts"][k] for k in sorted(d["parts"])]
        rel = os.path.relpath(gkey, "/usr/share/info")

        def load(parts=parts):
            return normalise(info_to_text("\n\x1f\n".join(decode(read_bytes(p)) for p in parts)))
        srcs.append(Source("info", "info:" + rel, d["pkg"], "info-" + rel.replace("/", "-"), load))

    # HTML manuals and books
    for family, pkg, root, pattern, skip in HTML_SOURCES:
        for path in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
            rel = os.path.relpath(path, root)
            if skip and skip.match(rel) or not os.path.isfile(path):
                continue
            name = family + "-" + re.sub(r"\.html$", "", rel).replace("/", "-")
            srcs.append(Source(family, f"html:{pkg}:{rel}", pkg, name, lambda p=path: html_to_text(p)))

    # plain-text books and documents
    seen = set()
    for family, pkg, pattern, skip in TEXT_SOURCES:
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            bn = os.path.basename(path)
            if real in seen or not os.path.isfile(real) or (skip and skip.match(bn)):
                continue
            seen.add(real)
            name = "txt-" + re.sub(r"\.(txt|text)(\.gz)?$", "", bn)
            srcs.append(Source(family, f"text:{pkg}:{path}", pkg, name, lambda p=real: text_file(p)))

    # Perl pods (/usr/share/perl/5.36 is a link to 5.36.0)
    seen = set()
    for d in POD_DIRS:
        for path in sorted(glob.glob(os.path.join(d, "*.pod"))):
            bn = os.path.basename(path)
            real = os.path.realpath(path)
            if POD_SKIP.match(bn) or real in seen or bn in seen:
                continue
            seen.update((real, bn))
            srcs.append(Source("perl", "pod:" + bn, "perl-doc", "perl-" + bn[:-4], lambda p=path: pod_to_text(p)))

    # man pages of the packages in MAN_PACKAGES
    seen = set()
    for pkg in MAN_PACKAGES:
        for f in sorted(lists.get(pkg, [])):
            m = re.match(r"^/usr/share/man/(man[1-8])/([^/]+)$", f)
            if not m:
                continue
            real = os.path.realpath(f)
            if real in seen or not os.path.isfile(real) or os.path.islink(f):
                continue
            try:
                if os.path.getsize(real) < (900 if real.endswith(".gz") else 2500):
                    continue  # too small to give 4 KB of text
            except OSError:
                continue
            seen.add(real)
            page = re.sub(r"\.gz$", "", m.group(2))
            srcs.append(Source("man", f"man:{m.group(1)}/{page}", pkg, f"{m.group(1)}-{page}",
                               lambda p=real: man_to_text(p)))
    return srcs


# ---- splitting and writing ------------------------------------------------------------------------------

def unit(key):
    """Deterministic value in [0, 1) from a source id."""
    return int.from_bytes(hashlib.sha256((SALT + key).encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def cut_parts(text, max_bytes):
    """Cut text into parts of at most max_bytes (UTF-8) at paragraph boundaries (else line boundaries)."""
    b = text.encode("utf-8")
    if len(b) <= max_bytes:
        return [text]
    parts, rest = [], text
    while len(rest.encode("utf-8")) > max_bytes:
        window = rest.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
        at = window.rfind("\n\n", len(window) // 2)
        if at < 0:
            at = window.rfind("\n", len(window) // 2)
        at = at + 1 if at >= 0 else len(window)
        parts.append(rest[:at])
        rest = rest[at:].lstrip("\n")
    if rest.strip():
        # avoid a tiny last part: merge it into the previous when that still fits in 1.25 x max
        if parts and len(rest.encode("utf-8")) < max_bytes // 4:
            parts[-1] = parts[-1].rstrip("\n") + "\n\n" + rest
        else:
            parts.append(rest)
    return [normalise(p) for p in parts]


def write_if_changed(path, data):
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(out, rows_extra=None):
    """MANIFEST.tsv over everything in train/ and heldout/ (documents and chats)."""
    sources = {}
    if rows_extra:
        sources.update(rows_extra)
    else:  # keep the sources of the documents from the previous manifest
        try:
            with open(os.path.join(out, "MANIFEST.tsv"), encoding="utf-8") as f:
                for line in f:
                    c = line.rstrip("\n").split("\t")
                    if len(c) >= 3 and c[0] != "split":
                        sources[c[0] + "/" + c[1]] = c[2]
        except OSError:
            pass
    chats = {}
    try:
        with open(os.path.join(out, "chats.tsv"), encoding="utf-8") as f:
            for line in f:
                c = line.rstrip("\n").split("\t")
                if len(c) >= 2 and c[0] != "file":
                    chats[c[0]] = c[1]
    except OSError:
        pass
    lines = ["split\tfile\tsource\tbytes\tsha256"]
    totals = {}
    for split in ("train", "heldout"):
        d = os.path.join(out, split)
        for fn in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not fn.endswith(".txt"):
                continue
            p = os.path.join(d, fn)
            rel = split + "/" + fn
            src = chats.get(rel) or sources.get(rel) or ("dsa-chat" if fn.startswith("chat-") else "?")
            n = os.path.getsize(p)
            lines.append(f"{split}\t{fn}\t{src}\t{n}\t{sha256_file(p)}")
            t = totals.setdefault(split, [0, 0, 0, 0])
            if fn.startswith("chat-"):
                t[2] += 1
                t[3] += n
            else:
                t[0] += 1
                t[1] += n
    write_if_changed(os.path.join(out, "MANIFEST.tsv"), ("\n".join(lines) + "\n").encode("utf-8"))
    return totals


def main():
    default_out = os.environ.get("DSACHAT_CORPUS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dsachat", "corpus")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    ap.add_argument("--heldout-frac", type=float, default=0.05, help="share of documents held out by hash")
    ap.add_argument("--min-bytes", type=int, default=4096, help="drop documents shorter than this")
    ap.add_argument("--max-part", type=int, default=262144, help="cut longer documents into parts of this size")
    ap.add_argument("--long-bytes", type=int, default=61440, help="what counts as a long held-out document")
    ap.add_argument("--min-long-heldout", type=int, default=16, help="force this many long held-out documents")
    ap.add_argument("--no-caps", action="store_true", help="do not cap the training bytes of any family")
    ap.add_argument("--manifest-only", action="store_true", help="only rewrite MANIFEST.tsv (e.g. after chats)")
    ap.add_argument("--list-packages", action="store_true", help="print the Debian packages used and exit")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="name the duplicates dropped")
    a = ap.parse_args()

    if a.list_packages:
        print(" ".join(PACKAGES))
        return 0
    out = a.out
    if a.manifest_only:
        totals = write_manifest(out)
        summary(out, totals)
        return 0

    lists = dpkg_lists()
    versions = dpkg_versions()
    missing = [p for p in PACKAGES if p not in lists]
    if missing:
        log("make-corpus: not installed (skipped): " + " ".join(missing))
    srcs = find_sources(lists)
    if not a.quiet:
        log(f"make-corpus: {len(srcs)} candidate source documents; extracting ...")

    # extract, drop tiny, deduplicate, cut into parts
    docs = []          # (source, [parts])
    seen_hash = {}
    dropped_small = dropped_dup = 0
    for i, s in enumerate(srcs):
        if not a.quiet and i % 500 == 0 and i:
            log(f"  {i}/{len(srcs)}")
        text = s.load()
        if len(text.encode("utf-8")) < a.min_bytes:
            dropped_small += 1
            continue
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if h in seen_hash:
            dropped_dup += 1
            if a.verbose:
                log(f"  duplicate: {s.key} = {seen_hash[h]}")
            continue
        seen_hash[h] = s.key
        docs.append((s, cut_parts(text, a.max_part)))

    # split: by hash of the source id; big sources (> 1 MB) are never held out by chance
    held = set()
    for s, parts in docs:
        size = sum(len(p.encode("utf-8")) for p in parts)
        if size <= 1_000_000 and unit("split:" + s.key) < a.heldout_frac:
            held.add(s.key)

    def long_count():
        return sum(1 for s, parts in docs if s.key in held for p in parts if len(p.encode("utf-8")) >= a.long_bytes)

    # force long single-part documents into held-out, one family at a time (round robin)
    cands = {}
    for s, parts in docs:
        if len(parts) == 1 and len(parts[0].encode("utf-8")) >= a.long_bytes and s.key not in held:
            cands.setdefault(s.family, []).append(s)
    for fam in cands:
        cands[fam].sort(key=lambda s: unit("force:" + s.key))
    fams = sorted(cands)
    round_ = 0
    while long_count() < a.min_long_heldout and any(len(cands[f]) > round_ for f in fams):
        for f in fams:
            if long_count() >= a.min_long_heldout:
                break
            if len(cands[f]) > round_:
                held.add(cands[f][round_].key)
        round_ += 1

    # cap the training bytes of some families (documents ranked by hash)
    capped = 0
    keep = set()
    by_fam = {}
    for s, parts in docs:
        if s.key not in held:
            by_fam.setdefault(s.family, []).append((s, parts))
    for fam, items in by_fam.items():
        cap = None if a.no_caps else TRAIN_CAPS.get(fam)
        items.sort(key=lambda sp: unit("cap:" + sp[0].key))
        total = 0
        for s, parts in items:
            size = sum(len(p.encode("utf-8")) for p in parts)
            if cap is not None and total + size > cap:
                capped += 1
                continue
            total += size
            keep.add(s.key)

    # write
    files = {"train": [], "heldout": []}
    fam_order = {f: i for i, f in enumerate(["info", "text", "handbook", "abs", "python", "postgres", "git",
                                              "perl", "man"])}
    docs.sort(key=lambda sp: (fam_order.get(sp[0].family, 99), sp[0].key))
    for s, parts in docs:
        split = "heldout" if s.key in held else ("train" if s.key in keep else None)
        if not split:
            continue
        for j, p in enumerate(parts):
            name = slug(s.name) + (f"-p{j + 1:02d}" if len(parts) > 1 else "")
            files[split].append((name, s, p))
    sources = {}
    pkgs_used = set()
    for split, items in files.items():
        d = os.path.join(out, split)
        os.makedirs(d, exist_ok=True)
        wanted = set()
        for n, (name, s, text) in enumerate(items):
            fn = f"{n:04d}-{name}.txt"
            wanted.add(fn)
            write_if_changed(os.path.join(d, fn), text.encode("utf-8"))
            sources[f"{split}/{fn}"] = f"{s.pkg} {s.key}"
            pkgs_used.add(s.pkg)
        for fn in sorted(os.listdir(d)):  # documents of an earlier run that are gone now
            if re.match(r"^\d{4}-.*\.txt(\.tmp)?$", fn) and fn not in wanted:
                os.unlink(os.path.join(d, fn))
    src_lines = ["package\tversion"] + [f"{p}\t{versions.get(p, '?')}" for p in sorted(pkgs_used)]
    write_if_changed(os.path.join(out, "SOURCES.tsv"), ("\n".join(src_lines) + "\n").encode("utf-8"))
    totals = write_manifest(out, sources)
    if not a.quiet:
        log(f"make-corpus: dropped {dropped_small} short (< {a.min_bytes} B), {dropped_dup} duplicate, "
            f"{capped} over the family caps")
    summary(out, totals, a.long_bytes)
    return 0


def summary(out, totals, long_bytes=61440):
    long_held = 0
    fams = set()
    d = os.path.join(out, "heldout")
    for fn in os.listdir(d) if os.path.isdir(d) else []:
        if fn.endswith(".txt") and os.path.getsize(os.path.join(d, fn)) >= long_bytes:
            long_held += 1
    for split in ("train", "heldout"):
        t = totals.get(split, [0, 0, 0, 0])
        print(f"{split:8s} {t[0]:5d} docs {t[1] / 1e6:7.2f} MB   + {t[2]:3d} chats {t[3] / 1e6:6.2f} MB")
    print(f"heldout  {long_held} documents >= {long_bytes // 1024} KB    ({out})")


if __name__ == "__main__":
    sys.exit(main())
