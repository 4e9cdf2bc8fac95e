"""Read this machine's own apt sources (one-line and deb822 formats) so the emulator setup uses the mirror apt is
already configured with, never a host name written into the repo.

    python apt_sources.py mirror CODENAME   -> the URI serving CODENAME's main archive
    python apt_sources.py deb-src CODENAME  -> one-line deb-src entries for every suite of CODENAME (for a private
                                               apt configuration that fetches the qemu source package)
"""

import glob
import sys


def _one_line(text):
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        kind, words = words[0], words[1:]
        options = {}
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w.strip("[]"))
                if w.endswith("]"):
                    break
            options = dict(o.split("=", 1) for o in " ".join(opts).split() if "=" in o)
        if len(words) >= 2:
            yield {"types": [kind], "uris": [words[0]], "suites": [words[1]], "components": words[2:],
                   "signed_by": options.get("signed-by")}


def _deb822(text):
    for stanza in text.split("\n\n"):
        fields, last = {}, None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and last:
                fields[last] += "\n" + line.strip()
                continue
            if ":" in line:
                last, value = line.split(":", 1)
                last = last.strip().lower()
                fields[last] = value.strip()
        if "uris" in fields and fields.get("enabled", "yes").lower() != "no":
            signed = fields.get("signed-by")
            yield {"types": fields.get("types", "deb").split(), "uris": fields["uris"].split(),
                   "suites": fields.get("suites", "").split(), "components": fields.get("components", "").split(),
                   "signed_by": signed if signed and "\n" not in signed else None}


def entries():
    for path in sorted(glob.glob("/etc/apt/sources.list") + glob.glob("/etc/apt/sources.list.d/*.list")):
        yield from _one_line(open(path, encoding="utf-8").read())
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        yield from _deb822(open(path, encoding="utf-8").read())


def _of(codename):
    """Entries with a suite of this release (bookworm, bookworm-updates, bookworm-security, ...)."""
    return [e for e in entries() if "deb" in e["types"]
            and any(s == codename or s.startswith(codename + "-") or s.startswith(codename + "/") for s in e["suites"])]


def mirror(codename) -> str:
    for e in _of(codename):
        if codename in e["suites"] and "main" in e["components"]:
            return e["uris"][0]
    raise SystemExit(f"no apt source serves {codename} main (read /etc/apt/sources.list*)")


def deb_src(codename) -> str:
    lines = []
    for e in _of(codename):
        opt = f"[signed-by={e['signed_by']}] " if e["signed_by"] else ""
        for uri in e["uris"]:
            for suite in e["suites"]:
                lines.append(f"deb-src {opt}{uri} {suite} {' '.join(e['components'])}")
    if not lines:
        raise SystemExit(f"no apt source serves {codename} (read /etc/apt/sources.list*)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    what, codename = sys.argv[1:3]
    print(mirror(codename) if what == "mirror" else deb_src(codename), end="\n" if what == "mirror" else "")
