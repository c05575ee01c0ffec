"""Public refusal benchmarks, loaded from their published files into :class:`~persona_gate.prompts.sets.Request`.

persona_gate does not redistribute public prompt sets: each loader reads the file exactly as its
authors publish it (CSV or JSON, original column names) and maps the rows onto ``Request``
objects with ``harmful``, ``category``, ``source``, ``id`` and ``split`` filled in where the set
says so. ``source=`` picks where the file comes from:

- ``None``: the canonical upstream URL (downloaded once into the cache);
- a local file, or a local directory holding the file under its published name;
- an ``http(s)://`` or ``file://`` URL.

Downloads go to ``$PERSONA_GATE_CACHE`` (default ``~/.cache/persona_gate/datasets``) and are
written atomically (temporary file, then ``os.replace``), so an interrupted download never
leaves a truncated file behind. Pass ``sha256=`` to pin the exact bytes: a local file or download
whose digest differs raises :class:`~persona_gate.errors.DatasetError`. Every problem (no
network, missing file or column, ragged or empty file) raises ``DatasetError`` naming the fix;
a loader returns every row or nothing.

Example::

    harmful = load_strongreject("data/strongreject_dataset.csv")
    xs = load_xstest()  # downloads once, then reads the cache
    print(len(harmful), sum(r.harmful for r in xs))
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import DatasetError
from .sets import Request, TraitSet, load_trait

Source = str | os.PathLike | None

STRONGREJECT_URL = (
    "https://raw.githubusercontent.com/alexandrasouly/strongreject/main/strongreject_dataset/strongreject_dataset.csv"
)
ADVBENCH_URL = "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv"
ARDITI_URL = "https://raw.githubusercontent.com/andyrdt/refusal_direction/main/dataset/splits/{kind}_{split}.json"
XSTEST_URL = "https://raw.githubusercontent.com/paul-rottger/exaggerated-safety/main/xstest_prompts.csv"
JAILBREAKBENCH_URL = (
    "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors/resolve/main/data/harmful-behaviors.csv"
)
HARMBENCH_URL = (
    "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main/"
    "data/behavior_datasets/harmbench_behaviors_text_{split}.csv"
)

_DOWNLOAD_TIMEOUT_S = 60.0
_NO_DOWNLOADS: contextvars.ContextVar[bool] = contextvars.ContextVar("persona_gate_no_downloads", default=False)
_CHUNK = 1 << 16


# ----------------------------------------------------------------------------- locating files


def cache_dir() -> Path:
    """Where downloads are kept: ``$PERSONA_GATE_CACHE`` or ``~/.cache/persona_gate/datasets``."""
    env = os.environ.get("PERSONA_GATE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "persona_gate" / "datasets"


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.split("://", 1)[0].lower() in ("http", "https", "file")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, sha256: str | None, origin: str) -> None:
    if sha256 is None:
        return
    actual = _sha256_of(path)
    if actual != sha256.strip().lower():
        raise DatasetError(
            f"checksum mismatch for {origin}: expected sha256 {sha256}, got {actual}. The file changed "
            "upstream or is corrupted; check that you have the version you meant and pass its sha256 "
            "(or sha256=None to skip the check)."
        )


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Within it :func:`fetch` reads only the cache: a file not cached is a :class:`DatasetError`, never a
    download (a cost plan made offline: ``persona-gate run --plan`` without weights)."""
    token = _NO_DOWNLOADS.set(True)
    try:
        yield
    finally:
        _NO_DOWNLOADS.reset(token)


def fetch(url: str, *, sha256: str | None = None, hint: str = "") -> Path:
    """Download ``url`` into :func:`cache_dir` (once) and return the local path.

    A cached copy is reused when it matches ``sha256`` (or when no digest is given); a cached copy
    that does not match is downloaded again. The new bytes are written to a temporary file in the
    cache and moved into place only after they verify, so readers never see a partial file.
    """
    name = Path(unquote(urlparse(url).path)).name or "download"
    target = cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file() and (sha256 is None or _sha256_of(target) == sha256.strip().lower()):
        return target
    how_else = hint or "download the file yourself and pass its local path as source=..."
    if _NO_DOWNLOADS.get():
        raise DatasetError(f"{url} is not in the download cache ({target.parent}) and downloads are off; {how_else}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"cannot create the download cache {target.parent} ({e}); set PERSONA_GATE_CACHE to a "
            f"writable folder, or {how_else}"
        ) from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256.strip().lower():
            raise DatasetError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest.hexdigest()}. The "
                "file changed upstream or the download was altered; check the URL and the digest (or "
                "pass sha256=None to accept the current file)."
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as e:
        # HTTPError, timeouts and refused connections all land here; ValueError covers bad URLs.
        # DatasetError is a ValueError too, so re-raise ours untouched.
        if isinstance(e, DatasetError):
            raise
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        raise DatasetError(f"could not download {url} ({reason}); {how_else}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_source(
    source: Source,
    *,
    default_url: str,
    names: Sequence[str],
    sha256: str | None = None,
    usage: str = "",
) -> Path:
    """Turn ``source`` (None, URL, file or directory) into a verified local file path.

    ``names`` are the file names to look for inside a directory, the published name first;
    ``usage`` is an example call for the error message that tells a user how to pass a local copy.
    """
    hint = f"download it yourself and pass the local file: {usage or 'source=' + repr('path/to/' + names[0])}"
    if source is None:
        return fetch(default_url, sha256=sha256, hint=hint)
    if _is_url(source):
        return fetch(str(source), sha256=sha256, hint=hint)
    path = Path(source).expanduser()
    if path.is_dir():
        found = next((path / n for n in names if (path / n).is_file()), None)
        if found is None:
            raise DatasetError(
                f"{path} is a folder but holds none of {', '.join(names)}; pass the file itself as "
                f"source=..., or put the published file ({names[0]}) in that folder."
            )
        path = found
    elif not path.is_file():
        raise DatasetError(
            f"{path} does not exist; pass an existing file, a folder holding {names[0]}, or a URL "
            f"(source=None downloads {default_url})."
        )
    _check_sha256(path, sha256, str(path))
    return path


def _resolve(loader: str, source: Source, sha256: str | None, url: str, names: Sequence[str], args: str = "") -> Path:
    """:func:`resolve_source` for the loader named ``loader``, whose usage hint passes the first of ``names``."""
    return resolve_source(
        source, default_url=url, names=names, sha256=sha256, usage=f"{loader}({args}source='path/to/{names[0]}')"
    )


# ----------------------------------------------------------------------------- parsing


def _read_csv(path: Path, required: Sequence[str], text_column: str) -> list[dict[str, str]]:
    """All rows of a CSV with a header; raises on missing columns, ragged rows or blank prompts."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise DatasetError(f"{path} is empty (no header row); re-download it or pass the right file.")
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(
                    f"{path} lacks column(s) {', '.join(missing)}: found {', '.join(header)}; expected "
                    f"{', '.join(required)}. Is this the right file for this loader?"
                )
            rows = []
            for row in reader:
                # DictReader stores surplus fields under None and fills short rows with None.
                if None in row or any(v is None for v in row.values()):
                    raise DatasetError(
                        f"{path} line {reader.line_num} has a different number of fields than the "
                        f"header ({len(header)}); the file is damaged, so re-download it."
                    )
                if not row[text_column].strip():
                    raise DatasetError(
                        f"{path} line {reader.line_num} has an empty {text_column!r}; fix or drop that row."
                    )
                rows.append(row)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e}); pass the published CSV file.") from None
    except csv.Error as e:
        raise DatasetError(f"{path} is not a readable CSV file ({e}); re-download it.") from None
    if not rows:
        raise DatasetError(f"{path} has a header but no rows; re-download it or pass the right file.")
    return rows


def _read_json_records(path: Path, required: Sequence[str]) -> list[dict]:
    """A JSON array of objects, each holding ``required`` keys with a non-empty first key."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); re-download it.") from None
    if not isinstance(raw, list):
        raise DatasetError(
            f"{path} holds a JSON {type(raw).__name__}, expected an array of "
            f"{{{', '.join(required)}}} objects; is this the right file?"
        )
    if not raw:
        raise DatasetError(f"{path} is an empty JSON array; re-download it or pass the right file.")
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict) or any(k not in rec for k in required):
            found = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise DatasetError(
                f"{path} record {i} lacks key(s) {', '.join(required)} (found {found}); "
                "is this the right file for this loader?"
            )
        if not isinstance(rec[required[0]], str) or not rec[required[0]].strip():
            raise DatasetError(f"{path} record {i} has an empty {required[0]!r}; fix or drop that record.")
    return raw


def _check_choice(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise DatasetError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}.")


def _width(n: int) -> int:
    return max(3, len(str(n - 1)))


def _numbered_harmful(
    rows: list[dict[str, str]],
    prefix: str,
    text: str,
    source: str,
    category: str | None = None,
    origin: str | None = None,
) -> list[Request]:
    """Harmful requests from the ``text`` column, numbered ``<prefix>-000`` on; ``category`` and
    ``origin`` name optional columns, an origin given as ``<source>/<origin>``."""
    w = _width(len(rows))
    return [
        Request(
            text=r[text],
            id=f"{prefix}-{i:0{w}d}",
            harmful=True,
            category=(r[category] or None) if category else None,
            source=f"{source}/{r[origin]}" if origin and r[origin] else source,
        )
        for i, r in enumerate(rows)
    ]


# ----------------------------------------------------------------------------- loaders


def load_strongreject(source: Source = None, *, sha256: str | None = None) -> list[Request]:
    """StrongREJECT's 313 forbidden prompts (Souly et al. 2024); ``source`` is ``strongreject/<origin>``."""
    path = _resolve(
        "load_strongreject", source, sha256, STRONGREJECT_URL, ("strongreject_dataset.csv", "strongreject.csv")
    )
    rows = _read_csv(path, ("category", "source", "forbidden_prompt"), "forbidden_prompt")
    return _numbered_harmful(rows, "strongreject", "forbidden_prompt", "strongreject", "category", "source")


def load_advbench(source: Source = None, *, sha256: str | None = None) -> list[Request]:
    """AdvBench's 520 harmful behaviours (Zou et al. 2023), the ``goal`` column."""
    path = _resolve("load_advbench", source, sha256, ADVBENCH_URL, ("harmful_behaviors.csv", "advbench.csv"))
    return _numbered_harmful(_read_csv(path, ("goal", "target"), "goal"), "advbench", "goal", "advbench")


def load_arditi(kind: str, split: str, source: Source = None, *, sha256: str | None = None) -> list[Request]:
    """One split of Arditi et al. (2024)'s refusal_direction sets (``{kind}_{split}.json``).

    The harmless splits are Alpaca instructions, licensed CC BY-NC 4.0 (non-commercial).
    """
    _check_choice(kind, ("harmful", "harmless"), "kind")
    _check_choice(split, ("train", "val", "test"), "split")
    name = f"{kind}_{split}.json"
    path = _resolve(
        "load_arditi", source, sha256, ARDITI_URL.format(kind=kind, split=split), (name,), f"{kind!r}, {split!r}, "
    )
    recs = _read_json_records(path, ("instruction",))
    w = _width(len(recs))
    return [
        Request(
            text=r["instruction"],
            id=f"arditi-{kind}-{split}-{i:0{w}d}",
            harmful=(kind == "harmful"),
            category=r.get("category") or None,
            source=f"arditi/{kind}_{split}",
            split=split,
        )
        for i, r in enumerate(recs)
    ]


def load_xstest(source: Source = None, *, sha256: str | None = None) -> list[Request]:
    """XSTest's 450 prompts (Röttger et al. 2024): 250 safe look-alikes, 200 unsafe (``harmful=True``).

    ``category`` is the prompt ``type`` (e.g. ``homonyms``, ``contrast_homonyms``). CC BY 4.0.
    """
    path = _resolve("load_xstest", source, sha256, XSTEST_URL, ("xstest_prompts.csv",))
    rows = _read_csv(path, ("id", "prompt", "type", "label"), "prompt")
    bad = sorted({r["label"] for r in rows} - {"safe", "unsafe"})
    if bad:
        raise DatasetError(f"{path} has label(s) {', '.join(map(repr, bad))}; XSTest labels are 'safe' or 'unsafe'.")
    return [
        Request(
            text=r["prompt"],
            id=f"xstest-{r['id']}",
            harmful=(r["label"] == "unsafe"),
            category=r["type"] or None,
            source="xstest",
        )
        for r in rows
    ]


def load_jailbreakbench(source: Source = None, *, sha256: str | None = None) -> list[Request]:
    """JBB-Behaviors' 100 harmful behaviours (Chao et al. 2024), the ``Goal`` column."""
    path = _resolve(
        "load_jailbreakbench",
        source,
        sha256,
        JAILBREAKBENCH_URL,
        ("harmful-behaviors.csv", "behaviors.csv", "jailbreakbench.csv", "jbb_behaviors_harmful.csv"),
    )
    rows = _read_csv(path, ("Goal", "Target", "Behavior", "Category", "Source"), "Goal")
    return _numbered_harmful(rows, "jbb", "Goal", "jailbreakbench", "Category", "Source")


def load_harmbench(
    source: Source = None,
    *,
    split: str = "test",
    functional: Sequence[str] | None = None,
    with_context: bool = True,
    sha256: str | None = None,
) -> list[Request]:
    """HarmBench text behaviours (Mazeika et al. 2024): 320 in test, 80 in val.

    ``functional`` keeps only those FunctionalCategory values (``("standard",)`` gives the 159
    standard test behaviours). Contextual behaviours are rendered the way HarmBench's own
    DirectRequest baseline does, ``context + "\\n\\n---\\n\\n" + behavior``, unless
    ``with_context=False``. ``id`` is the BehaviorID, ``category`` the SemanticCategory.
    """
    _check_choice(split, ("val", "test", "all"), "split")
    name = f"harmbench_behaviors_text_{split}.csv"
    path = resolve_source(
        source,
        default_url=HARMBENCH_URL.format(split=split),
        names=(name, f"harmbench_{split}.csv"),
        sha256=sha256,
        usage=f"load_harmbench(source='path/to/{name}', split={split!r})",
    )
    cols = ("Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID")
    rows = _read_csv(path, cols, "Behavior")
    if functional is not None:
        functional = (functional,) if isinstance(functional, str) else tuple(functional)
        known = {r["FunctionalCategory"] for r in rows}
        unknown = sorted(set(functional) - known)
        if unknown:
            raise DatasetError(
                f"functional={list(functional)!r}: {', '.join(unknown)} not in {path}; "
                f"its FunctionalCategory values are {', '.join(sorted(known))}."
            )
        rows = [r for r in rows if r["FunctionalCategory"] in functional]
    out = []
    for r in rows:
        context = r["ContextString"].strip()
        text = f"{context}\n\n---\n\n{r['Behavior']}" if context and with_context else r["Behavior"]
        out.append(
            Request(
                text=text,
                id=r["BehaviorID"],
                harmful=True,
                category=r["SemanticCategory"] or None,
                source=f"harmbench/{r['FunctionalCategory']}",
                split=None if split == "all" else split,
            )
        )
    return out


def load_trait_json(path_or_url: str | os.PathLike, *, name: str | None = None, sha256: str | None = None) -> TraitSet:
    """A persona-vectors / assistant-axis style trait file (``{"instruction": [{pos, neg}], "questions": [...]}``).

    ``name`` defaults to the file's stem (``evil.json`` -> ``evil``).
    """
    if _is_url(path_or_url):
        path = fetch(
            str(path_or_url),
            sha256=sha256,
            hint="download it yourself and pass the local file: load_trait_json('path/to/trait.json')",
        )
        default_name = Path(unquote(urlparse(str(path_or_url)).path)).stem
    else:
        path = Path(path_or_url).expanduser()
        if not path.is_file():
            raise DatasetError(f"{path} does not exist; pass the path (or URL) of a trait JSON file.")
        _check_sha256(path, sha256, str(path))
        default_name = path.stem
    return load_trait(name or default_name, path)
