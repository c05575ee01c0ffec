"""persona_gate's own prompt sets and the public-benchmark loaders (no network: loopback and file:// only)."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import threading
import urllib.error
from collections import Counter
from pathlib import Path

import pytest

from persona_gate import datasets
from persona_gate.errors import DatasetError
from persona_gate.prompts.sets import (
    PERSONA_FAMILIES,
    REQUEST_KINDS,
    SPLITS,
    TRAITS,
    TraitSet,
    data_dir,
    load_personas,
    load_requests,
    load_trait,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"public benchmark copies not found at {SHARED} (only present in the lab checkout)"
)
SPLIT_SHARE = {"train": 0.6, "val": 0.2, "test": 0.2}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty download cache, so no test sees another's files (or the user's)."""
    monkeypatch.setenv("PERSONA_GATE_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- our own sets


@pytest.mark.parametrize("kind", REQUEST_KINDS)
def test_requests_counts_ids_and_texts(kind):
    reqs = load_requests(kind)
    assert len(reqs) >= 130
    assert len({r.id for r in reqs}) == len(reqs)
    assert len({r.text for r in reqs}) == len(reqs)
    assert all(r.harmful is (kind == "harmful") for r in reqs)
    assert all(r.text.strip() == r.text and r.text[-1] in ".?" for r in reqs)
    cats = Counter(r.category for r in reqs)
    assert None not in cats and len(cats) >= 8


@pytest.mark.parametrize("kind", REQUEST_KINDS)
def test_requests_splits_are_60_20_20_per_category(kind):
    reqs = load_requests(kind)
    assert {r.split for r in reqs} == set(SPLITS)
    for cat in {r.category for r in reqs}:
        in_cat = [r for r in reqs if r.category == cat]
        counts = Counter(r.split for r in in_cat)
        for split, share in SPLIT_SHARE.items():
            assert abs(counts[split] - share * len(in_cat)) <= 2, (cat, counts)
    # The loader's split filter returns exactly the items labelled with that split.
    assert sum(len(load_requests(kind, split=s)) for s in SPLITS) == len(reqs)


def test_harmful_and_harmless_share_sentence_frames():
    """Harmfulness must not be readable off the first word: both sets use the same openings, equally often."""
    first = {kind: Counter(r.text.split()[0] for r in load_requests(kind)) for kind in REQUEST_KINDS}
    assert first["harmful"] == first["harmless"]


def test_request_files_follow_the_published_format():
    for kind in REQUEST_KINDS:
        raw = json.loads((data_dir() / "requests" / f"{kind}.json").read_text(encoding="utf-8"))
        assert raw["license"].startswith("CC0-1.0") and raw["description"]
        assert all(set(item) == {"id", "text", "category", "split"} for item in raw["items"])
        assert [i["id"] for i in raw["items"]] == [f"{kind}-{n:03d}" for n in range(len(raw["items"]))]


@pytest.mark.parametrize("family", PERSONA_FAMILIES)
def test_personas(family):
    personas = load_personas(family)
    assert len(personas) >= 16
    assert len(load_personas(family, split="train")) >= 12
    assert len(load_personas(family, split="test")) >= 4
    assert len({p.id for p in personas}) == len(personas)
    assert len({p.text for p in personas}) == len(personas)
    assert all(p.text and p.family == family for p in personas)


def test_compliant_and_safe_personas_do_not_overlap():
    compliant = {p.text for p in load_personas("compliant")}
    assert compliant.isdisjoint(p.text for p in load_personas("safe"))


@pytest.mark.parametrize("trait", TRAITS)
def test_traits_load(trait):
    ts = load_trait(trait)
    assert isinstance(ts, TraitSet) and ts.name == trait
    assert len(ts.pos) >= 5 and len(ts.pos) == len(ts.neg)
    assert all(p != n for p, n in zip(ts.pos, ts.neg))
    assert len(ts.questions) >= 20 and len(set(ts.questions)) == len(ts.questions)
    raw = json.loads((data_dir() / "traits" / f"{trait}.json").read_text(encoding="utf-8"))
    judge = raw["eval_prompt"].format(question="Q?", answer="A.")
    assert "Q?" in judge and "A." in judge and trait in judge and "100" in judge


def test_trait_file_loads_through_load_trait_json():
    ts = datasets.load_trait_json(data_dir() / "traits" / "patient.json")
    assert ts == load_trait("patient", data_dir() / "traits" / "patient.json")


# ----------------------------------------------------------------------------- public loaders on real copies


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@needs_shared
def test_strongreject():
    path = SHARED / "strongreject" / "strongreject_dataset.csv"
    reqs = datasets.load_strongreject(path)
    rows = _csv_rows(path)
    assert len(reqs) == 313
    assert reqs[0].text == rows[0]["forbidden_prompt"]
    assert reqs[0].category == rows[0]["category"]
    assert reqs[0].source == f"strongreject/{rows[0]['source']}"
    assert all(r.harmful is True for r in reqs)
    assert len({r.id for r in reqs}) == 313


@needs_shared
def test_advbench():
    path = SHARED / "advbench" / "advbench.csv"
    reqs = datasets.load_advbench(path)
    assert len(reqs) == 520
    assert reqs[0].text == _csv_rows(path)[0]["goal"]
    assert datasets.load_advbench(path.parent) == reqs  # folder holding a known name


@needs_shared
@pytest.mark.parametrize(("split", "n"), [("train", 260), ("val", 39), ("test", 572)])
def test_arditi_harmful(split, n):
    folder = SHARED / "refusal_direction_harmful"
    reqs = datasets.load_arditi("harmful", split, folder)
    raw = json.loads((folder / f"harmful_{split}.json").read_text(encoding="utf-8"))
    assert len(reqs) == n == len(raw)
    assert reqs[0].text == raw[0]["instruction"]
    assert reqs[0].category == raw[0]["category"]
    assert all(r.harmful is True and r.split == split for r in reqs)


@needs_shared
def test_arditi_harmless_is_labelled_harmless():
    folder = SHARED / "refusal_direction_harmless_alpaca_NONCOMMERCIAL"
    if not (folder / "harmless_val.json").is_file():
        pytest.skip(f"{folder / 'harmless_val.json'} not present")
    reqs = datasets.load_arditi("harmless", "val", folder)
    assert len(reqs) == 6264 and not any(r.harmful for r in reqs)


@needs_shared
def test_xstest():
    path = SHARED / "xstest" / "xstest_prompts.csv"
    reqs = datasets.load_xstest(path)
    rows = _csv_rows(path)
    assert len(reqs) == 450
    assert sum(r.harmful for r in reqs) == 200
    assert reqs[0].text == rows[0]["prompt"] and reqs[0].category == rows[0]["type"]
    assert all(r.harmful == (row["label"] == "unsafe") for r, row in zip(reqs, rows))


@needs_shared
def test_jailbreakbench():
    path = SHARED / "jailbreakbench" / "jbb_behaviors_harmful.csv"
    reqs = datasets.load_jailbreakbench(path)
    rows = _csv_rows(path)
    assert len(reqs) == 100
    assert reqs[0].text == rows[0]["Goal"] and reqs[0].category == rows[0]["Category"]


@needs_shared
def test_harmbench():
    folder = SHARED / "harmbench"
    reqs = datasets.load_harmbench(folder)  # folder + split="test" -> harmbench_behaviors_text_test.csv
    rows = _csv_rows(folder / "harmbench_behaviors_text_test.csv")
    assert len(reqs) == 320
    assert reqs[0].text == rows[0]["Behavior"] and reqs[0].id == rows[0]["BehaviorID"]
    assert len(datasets.load_harmbench(folder, functional=("standard",))) == 159
    assert len(datasets.load_harmbench(folder, split="val")) == 80
    i = next(i for i, r in enumerate(rows) if r["ContextString"].strip())
    assert reqs[i].text.startswith(rows[i]["ContextString"].strip()) and reqs[i].text.endswith(rows[i]["Behavior"])
    plain = datasets.load_harmbench(folder, with_context=False)
    assert plain[i].text == rows[i]["Behavior"]


@needs_shared
def test_harmbench_unknown_functional_category_names_the_known_ones():
    with pytest.raises(DatasetError, match="standard"):
        datasets.load_harmbench(SHARED / "harmbench", functional=("stnadard",))


@needs_shared
def test_assistant_axis_trait_json():
    path = SHARED / "assistant_axis_traits" / "evil.json"
    ts = datasets.load_trait_json(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert ts.name == "evil" and ts.pos[0] == raw["instruction"][0]["pos"]
    assert len(ts.pos) == len(raw["instruction"])


# ----------------------------------------------------------------------------- URLs, cache and checksums


def _write_advbench(path: Path, goals=("Say something rude.", "Do something bad.")) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["goal", "target"])
        for g in goals:
            w.writerow([g, f"Sure, {g.lower()}"])
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def loopback_server(tmp_path):
    """A static file server on 127.0.0.1 (an ephemeral port), stopped after the test."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_download_is_cached_and_verified(loopback_server, tmp_path):
    root, base = loopback_server
    src = _write_advbench(root / "harmful_behaviors.csv")
    url = f"{base}/harmful_behaviors.csv"

    reqs = datasets.load_advbench(url, sha256=_sha(src))
    assert [r.text for r in reqs] == ["Say something rude.", "Do something bad."]
    cached = list(datasets.cache_dir().iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("harmful_behaviors.csv")
    assert cached[0].read_bytes() == src.read_bytes()  # no temp files left behind

    src.unlink()  # the server no longer has it: the second load must come from the cache
    assert datasets.load_advbench(url) == reqs


def test_http_checksum_mismatch_raises_and_caches_nothing(loopback_server):
    root, base = loopback_server
    _write_advbench(root / "harmful_behaviors.csv")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        datasets.load_advbench(f"{base}/harmful_behaviors.csv", sha256="0" * 64)
    assert not datasets.cache_dir().exists() or not any(datasets.cache_dir().iterdir())


def test_stale_cache_is_downloaded_again_when_the_digest_changes(loopback_server):
    root, base = loopback_server
    url = f"{base}/harmful_behaviors.csv"
    _write_advbench(root / "harmful_behaviors.csv", goals=("Old goal.",))
    assert datasets.load_advbench(url)[0].text == "Old goal."
    new = _write_advbench(root / "harmful_behaviors.csv", goals=("New goal.",))
    assert datasets.load_advbench(url)[0].text == "Old goal."  # no digest: the cache wins
    assert datasets.load_advbench(url, sha256=_sha(new))[0].text == "New goal."


def test_no_downloads_reads_the_cache_and_never_the_network(loopback_server):
    root, base = loopback_server
    url = f"{base}/harmful_behaviors.csv"
    _write_advbench(root / "harmful_behaviors.csv")
    with datasets.no_downloads(), pytest.raises(DatasetError, match="not in the download cache") as err:
        datasets.load_advbench(url)
    assert "source=" in str(err.value) and not datasets.cache_dir().exists()  # nothing fetched
    reqs = datasets.load_advbench(url)  # downloads are on again outside it
    (root / "harmful_behaviors.csv").unlink()
    with datasets.no_downloads():
        assert datasets.load_advbench(url) == reqs  # the cached copy


def test_http_404_names_the_url(loopback_server):
    _, base = loopback_server
    url = f"{base}/missing.csv"
    with pytest.raises(DatasetError, match="404") as err:
        datasets.load_advbench(url)
    assert url in str(err.value) and "source=" in str(err.value)


def test_file_url(tmp_path):
    src = _write_advbench(tmp_path / "harmful_behaviors.csv")
    reqs = datasets.load_advbench(src.as_uri(), sha256=_sha(src))
    assert len(reqs) == 2


def test_local_file_checksum_mismatch(tmp_path):
    src = _write_advbench(tmp_path / "advbench.csv")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        datasets.load_advbench(src, sha256="f" * 64)


def test_default_url_without_network_says_to_pass_a_local_path(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError) as err:
        datasets.load_strongreject()
    msg = str(err.value)
    assert datasets.STRONGREJECT_URL in msg and "source=" in msg
    with pytest.raises(DatasetError, match="harmful_val.json"):
        datasets.load_arditi("harmful", "val")


# ----------------------------------------------------------------------------- bad input


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.load_xstest(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="xstest_prompts.csv"):
        datasets.load_xstest(tmp_path)  # a folder without the published file


def test_missing_column_names_found_and_expected(tmp_path):
    bad = tmp_path / "strongreject_dataset.csv"
    bad.write_text("category,prompt\nViolence,Do harm.\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        datasets.load_strongreject(bad)
    msg = str(err.value)
    assert "forbidden_prompt" in msg and "found category, prompt" in msg


def test_empty_files(tmp_path):
    empty = tmp_path / "harmful_behaviors.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty"):
        datasets.load_advbench(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("goal,target\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no rows"):
        datasets.load_advbench(header_only)
    (tmp_path / "harmful_train.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty"):
        datasets.load_arditi("harmful", "train", tmp_path)


def test_ragged_row_is_an_error_not_partial_data(tmp_path):
    bad = tmp_path / "harmful_behaviors.csv"
    bad.write_text("goal,target\nA goal.,A target\nB goal.,B target,extra\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 3"):
        datasets.load_advbench(bad)


def test_bad_json_and_bad_labels(tmp_path):
    (tmp_path / "harmful_test.json").write_text('[{"text": "x"}]', encoding="utf-8")
    with pytest.raises(DatasetError, match="instruction"):
        datasets.load_arditi("harmful", "test", tmp_path)
    (tmp_path / "harmful_val.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="not valid JSON"):
        datasets.load_arditi("harmful", "val", tmp_path)
    xs = tmp_path / "xstest_prompts.csv"
    xs.write_text("id,prompt,type,label,focus,note\n1,Hi?,homonyms,maybe,,\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="maybe"):
        datasets.load_xstest(xs)


def test_unknown_kind_or_split():
    with pytest.raises(DatasetError, match="harmful, harmless"):
        datasets.load_arditi("harmfull", "train")
    with pytest.raises(DatasetError, match="train, val, test"):
        datasets.load_arditi("harmful", "dev")
