"""Scan engines and the results store: a fork pool and a cached scan give the same report as a
plain scan, a scanner process killed mid-scan loses nothing, and the store only ever serves a
record whose artifact bytes, rules and options are unchanged."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from modelwarden.engine.local import ForkPoolEngine
from modelwarden.engine.store import DB_NAME, ResultStore
from modelwarden.errors import UsageError
from modelwarden.report.json_report import report_dict
from modelwarden.scanner import scan
from tests.conftest import ROOT, run_cli

EXAMPLES = ROOT / "examples" / "models"


def norm(report) -> dict:
    d = report_dict(report)
    d.pop("duration_s")
    d.pop("engine", None)
    return d


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("copies")
    for i in range(20):
        for name in ("dense_savedmodel", "evil_savedmodel"):
            shutil.copytree(EXAMPLES / name, root / f"{name}-{i:02d}")
    (root / "broken.pb").write_bytes(b"\x0a\xff\xff\xff\xff\x0f")  # a hostile, unreadable GraphDef
    return root


@pytest.fixture(scope="module")
def corpus(fixture_dir, copies) -> list[Path]:
    """Real artifacts of every family (TF scan fixtures, other formats, hostile ones) plus 40 copies
    of the bundled SavedModels, so a pool has work to share."""
    return [fixture_dir("build_tf_scan"), fixture_dir("build_other_formats"), copies]


@pytest.fixture(scope="module")
def serial_report(corpus):
    return scan(corpus, engine=ForkPoolEngine(1))


def test_pool_gives_the_serial_report(corpus, serial_report):
    eng = ForkPoolEngine(2)
    report = scan(corpus, engine=eng)
    assert eng.stats.workers == 2
    assert norm(report) == norm(serial_report)
    assert len(report.artifacts) > 50 and report.findings and report.errors  # the corpus has all three
    assert report.engine["workers"] == 2


@pytest.mark.parametrize("stored", [False, True])
def test_a_scanner_process_killed_mid_scan_loses_nothing(corpus, serial_report, stored, tmp_path):
    """Also with the results store on, where candidates reach the pool while it runs: the killed
    worker's artifact is retried once in a fresh worker, nothing is lost or counted twice."""
    killed: list[int] = []
    children_file = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    before = set(children_file.read_text().split())  # earlier tests' processes are not the pool's

    def progress(done: int, total: int, current: str) -> None:
        if done == 3 and not killed:
            children = [c for c in children_file.read_text().split() if c not in before]
            assert children, "no pool workers to kill"
            killed.append(int(children[0]))
            os.kill(killed[0], signal.SIGKILL)

    eng = ForkPoolEngine(2)
    report = scan(corpus, engine=eng, progress=progress, cache=tmp_path / "store" if stored else None)
    assert killed
    assert norm(report) == norm(serial_report)  # every artifact exactly once, same findings
    assert eng.stats.retried == 1  # the one in-flight artifact went to a fresh worker


def test_store_serves_unchanged_artifacts_and_reanalyses_changed_ones(corpus, copies, serial_report, tmp_path):
    store_dir = tmp_path / "store"
    first = scan(corpus, cache=store_dir)
    assert norm(first) == norm(serial_report)
    assert first.engine["cached"] == 0
    again = scan(corpus, cache=store_dir)
    assert norm(again) == norm(serial_report)
    assert again.engine["cached"] == len(serial_report.artifacts)  # errors are never stored
    assert again.engine["analysed"] == len(again.errors)

    # one byte changed in one artifact: only that one is analysed again
    victim = copies / "dense_savedmodel-00" / "saved_model.pb"
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        changed = scan(corpus, cache=store_dir)
        assert changed.engine["cached"] == len(serial_report.artifacts) - 1
    finally:
        victim.write_bytes(original)
    # another policy: nothing is served from the store
    strict = scan(corpus, cache=store_dir, policy="strict")
    assert strict.engine["cached"] == 0
    assert norm(strict) == norm(scan(corpus, policy="strict", engine=ForkPoolEngine(1)))


def test_pool_takes_store_misses_while_the_store_hashes_the_rest(copies, tmp_path):
    """The store looks artifacts up while the pool already analyses the first misses: a partly
    warm store through two workers gives the serial report, with every hit served and every miss
    (changed bytes; a non-UTF-8 directory name crosses the pipe and the store) analysed once."""
    tree = tmp_path / "tree"
    shutil.copytree(copies, tree)
    odd = os.fsdecode(b"odd-\xff-name")  # a lone surrogate in the path crosses the task pipe
    shutil.copytree(EXAMPLES / "dense_savedmodel", tree / odd)
    store_dir = tmp_path / "store"
    expected = norm(scan(tree, engine=ForkPoolEngine(1)))
    assert any("odd-" in a["path"] for a in expected["artifacts"])  # (reports escape the surrogate)
    cold = ForkPoolEngine(2)
    assert norm(scan(tree, cache=store_dir, engine=cold)) == expected
    assert cold.stats.workers == 2 and cold.stats.cached == 0
    for name, other in (("dense_savedmodel-03", "evil_savedmodel"), ("evil_savedmodel-11", "dense_savedmodel")):
        shutil.rmtree(tree / name)
        shutil.copytree(EXAMPLES / other, tree / name)  # other bytes, still a valid model
    expected = norm(scan(tree, engine=ForkPoolEngine(1)))
    warm = ForkPoolEngine(2)
    report = scan(tree, cache=store_dir, engine=warm)
    assert norm(report) == expected
    assert warm.stats.analysed == 2 + len(report.errors)  # (errors are never stored)
    assert warm.stats.cached == len(report.artifacts) - 2


def test_a_corrupt_store_record_is_analysed_again(copies, tmp_path):
    store_dir = tmp_path / "store"
    scan(copies, cache=store_dir)
    db = sqlite3.connect(store_dir / DB_NAME)
    db.execute("UPDATE results SET record = '{\"v\": 1, \"summary\": [1, 2]}'")
    db.execute("UPDATE results SET record = '[' WHERE rowid % 2 = 0")
    db.commit()
    db.close()
    report = scan(copies, cache=store_dir)
    assert report.engine["cached"] == 0
    assert norm(report) == norm(scan(copies, engine=ForkPoolEngine(1)))


def test_a_store_others_can_write_is_refused(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(UsageError, match="writable by nobody else"):
        ResultStore(d)
    res = run_cli("scan", str(EXAMPLES), "--cache-dir", str(d))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_cli_from_file_jobs_and_no_cache(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# models\n{EXAMPLES / 'dense_savedmodel'}\n\n{EXAMPLES / 'evil_savedmodel'}\n")
    res = run_cli("scan", "--from-file", str(listing), "--no-cache", "-j", "2", "-f", "json")
    assert res.returncode == 1, res.stderr
    assert '"evil_savedmodel"' in res.stdout or "evil_savedmodel" in res.stdout
    for bad in (["-j", "0"], ["-j", "x"], ["--from-file", str(tmp_path / "missing.txt")], []):
        res = run_cli("scan", *bad, "--no-cache")
        assert res.returncode == 2, (bad, res.stderr)
        assert "Traceback" not in res.stderr


def test_a_worker_answers_a_batch_at_once(copies):
    """The pool protocol on a real forked worker: results are held until a task asks for a reply,
    then sent together, one record per task in order, each the artifact's own result."""
    import select

    from modelwarden.engine import records
    from modelwarden.engine.interface import ScanJob
    from modelwarden.engine.local import _LEN, _kill, _task
    from modelwarden.formats.detect import discover
    from modelwarden.scanner import resolve_policy, scan_candidate

    cands = sorted(discover([str(copies)])[0], key=lambda c: c.display)[:3]
    job = ScanJob(resolve_policy(None))
    proc = ForkPoolEngine(2)._spawn(job, [])
    try:
        os.write(proc.tasks, _task(0, cands[0], False) + _task(1, cands[1], False))
        assert select.select([proc.results], [], [], 1.5)[0] == []  # two scans done long ago, nothing sent
        os.write(proc.tasks, _task(2, cands[2], True))
        buf = b""
        while len(buf) < 3 * _LEN.size or not _complete(buf, 3):
            assert select.select([proc.results], [], [], 30)[0], "the worker never answered"
            chunk = os.read(proc.results, 1 << 16)
            assert chunk
            buf += chunk
        got, pos = [], 0
        while pos < len(buf):
            (size,) = _LEN.unpack_from(buf, pos)
            got.append(records.loads(buf[pos + _LEN.size:pos + _LEN.size + size]))
            pos += _LEN.size + size
        assert [records.to_dict(r) for r in got] == [records.to_dict(scan_candidate(c, job)) for c in cands]
        os.close(proc.tasks)  # end of work: the worker exits cleanly
        _, status = os.waitpid(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        _kill(proc.pid)
        try:
            os.waitpid(proc.pid, 0)
        except ChildProcessError:
            pass


def test_long_tasks_and_long_results_never_deadlock_the_pool(tmp_path):
    """Tasks and results both larger than a pipe holds: paths near PATH_MAX make a worker's queue
    of tasks and a batch of its records each well over 64 KiB.  The parent never blocks writing
    tasks to a worker that is itself blocked sending results (a blocking write here hung for good);
    the pool finishes and gives the serial report."""
    import json

    deep = tmp_path
    for i in range(15):  # ~3,800 bytes of path: every task and every record carries it
        deep = deep / (f"{i:02d}" + "d" * 250)
    deep.mkdir(parents=True)
    for i in range(100):
        for name in ("dense_savedmodel", "evil_savedmodel"):
            shutil.copytree(EXAMPLES / name, deep / f"{name[:4]}{i:03d}")
    out = {}
    for jobs in ("1", "2"):
        res = run_cli("scan", str(tmp_path), "-j", jobs, "--no-cache", "-f", "json", "--no-progress", timeout=240)
        assert res.returncode == 1, res.stderr[-2000:]
        d = json.loads(res.stdout)
        d.pop("duration_s")
        out[jobs] = d
    assert out["2"].pop("engine")["workers"] == 2
    out["1"].pop("engine", None)
    assert out["2"] == out["1"]
    assert len(out["2"]["artifacts"]) == 200 and not out["2"]["errors"]


def test_a_worker_sending_a_malformed_or_oversized_record(copies, monkeypatch):
    """Records from a worker are checked, never trusted: one that is not a record becomes that
    artifact's error; one whose length prefix is over the limit ends the worker before its body is
    read, and its artifact is blamed once retried alone.  Every other artifact keeps its result."""
    import modelwarden.engine.local as local
    from modelwarden.engine import records

    expected = norm(scan(copies, engine=ForkPoolEngine(1)))
    real = local._encode

    def hostile(path, result):
        if path.endswith("dense_savedmodel-07"):
            return b'{"v": 2, "summary": 5'
        if path.endswith("dense_savedmodel-03"):
            return b" " * (records.MAX_RECORD_BYTES + 1)
        return real(path, result)

    monkeypatch.setattr(local, "_encode", hostile)
    eng = ForkPoolEngine(2)
    got = norm(scan(copies, engine=eng))
    assert eng.stats.workers == 2
    bad = ("dense_savedmodel-07", "dense_savedmodel-03")
    keep = [a for a in expected["artifacts"] if not a["path"].endswith(bad)]
    assert [a for a in got["artifacts"] if not a["path"].endswith(bad)] == keep
    assert len(got["artifacts"]) == len(expected["artifacts"]) - 2
    errors = {Path(e["path"]).name: e["message"] for e in got["errors"] if e["path"].endswith(bad)}
    assert "sent a malformed result" in errors["dense_savedmodel-07"]
    assert "died while reading it (SIGKILL)" in errors["dense_savedmodel-03"]
    assert [f for f in got["findings"] if not f["location"]["artifact"].endswith(bad)] == \
        [f for f in expected["findings"] if not f["location"]["artifact"].endswith(bad)]


def test_slow_artifacts_are_handed_out_one_at_a_time(tmp_path, monkeypatch):
    """A worker answers about 25 ms of work at a time: small artifacts in batches of up to 16, slow
    ones singly, so no worker is handed a long queue of slow artifacts while its sibling runs out
    of work.  32 slow artifacts (50 ms each, injected in the forked workers) come first in the
    order, 64 fast ones after: the two workers share the slow ones (a queue of 32 handed to one
    worker at the start gave it all of them, and its sibling none)."""
    import time
    from collections import Counter

    import modelwarden.scanner as scanner_mod

    for i in range(32):
        shutil.copytree(EXAMPLES / "dense_savedmodel", tmp_path / f"a-slow-{i:02d}")
    for i in range(64):
        shutil.copytree(EXAMPLES / "dense_savedmodel", tmp_path / f"b-fast-{i:02d}")
    log = tmp_path.parent / f"{tmp_path.name}-who-scanned.txt"
    real = scanner_mod.scan_candidate

    def slow_first(cand, job):
        if "a-slow-" in cand.path:
            time.sleep(0.05)
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        return real(cand, job)

    monkeypatch.setattr(scanner_mod, "scan_candidate", slow_first)
    eng = ForkPoolEngine(2)
    report = scan(tmp_path, engine=eng)
    assert eng.stats.workers == 2 and len(report.artifacts) == 96 and not report.errors
    per_worker = Counter(log.read_text().split())
    assert sum(per_worker.values()) == 32
    assert len(per_worker) == 2 and max(per_worker.values()) <= 24, per_worker


def _complete(buf: bytes, n: int) -> bool:
    from modelwarden.engine.local import _LEN

    pos = 0
    for _ in range(n):
        if pos + _LEN.size > len(buf):
            return False
        pos += _LEN.size + _LEN.unpack_from(buf, pos)[0]
    return pos <= len(buf)


def test_rules_for_a_format_are_the_rules_that_apply_to_it(fixture_dir):
    """Per artifact only the rules of its format are instantiated: for real artifacts of many
    formats, the rules run are exactly those whose applies_to holds, in id order."""
    from modelwarden.analysis.interface import ScanOptions
    from modelwarden.analysis.registry import rule_classes, rules_for
    from modelwarden.formats.detect import discover
    from modelwarden.scanner import _context, read_artifact, resolve_policy

    cands, _ = discover([str(fixture_dir("build_tf_scan")), str(fixture_dir("build_other_formats")),
                         str(EXAMPLES)])
    formats = set()
    for cand in cands:
        try:
            artifact = read_artifact(cand)
        except Exception:  # noqa: BLE001 - unreadable fixtures are not what this test is about
            continue
        formats.add(artifact.format)
        ctx = _context(artifact, resolve_policy(None), ScanOptions())
        everything = [cls for cls in rule_classes() if cls().applies_to(ctx)]
        assert [cls for cls in rules_for(artifact.format.value) if cls().applies_to(ctx)] == everything
        assert len(rules_for(artifact.format.value)) < len(rule_classes())  # others are not even made
    assert len(formats) >= 5


def _children() -> set[str]:
    return set(Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split())


def test_prestarted_workers_take_the_work_or_are_ended(copies):
    """Workers forked while the walk goes on (prestart) do the scan and give the serial report;
    workers forked for nothing (no artifact to analyse, another job, closed) are ended, never left."""
    from modelwarden.engine.interface import ScanJob
    from modelwarden.scanner import resolve_policy

    before = _children()
    eng = ForkPoolEngine(2)
    report = scan(copies, engine=eng)
    assert eng.stats.workers == 2 and norm(report) == norm(scan(copies, engine=ForkPoolEngine(1)))
    assert _children() == before

    job = ScanJob(resolve_policy(None))
    for ending in ("close", "nothing to do", "another job"):
        eng = ForkPoolEngine(2)
        eng.prestart(job, 20)
        assert len(_children() - before) == 2
        if ending == "close":
            eng.close()
        elif ending == "nothing to do":
            assert list(eng.run_lazily([], 20, job)) == []
        else:
            other = ScanJob(resolve_policy("strict"))
            assert list(eng.run_lazily([], 20, other)) == []
        assert _children() == before, ending
    small = ForkPoolEngine(2)
    small.prestart(job, 5)  # not a pool's worth: nothing forked
    assert _children() == before


@pytest.mark.parametrize("crashers", [("dense_savedmodel-05",), ("dense_savedmodel-05", "evil_savedmodel-02")])
def test_an_artifact_that_kills_its_scanner_is_the_one_blamed(copies, monkeypatch, crashers):
    """Workers hold a batch of results before sending them, so when one dies the parent cannot tell
    which of its queued artifacts it was reading: those go out again one at a time, and only the
    artifact that kills its scanner every time is reported; every other one keeps its findings.
    (The crash is injected in the forked workers: a hostile artifact that crashes a parser in C.)"""
    import modelwarden.scanner as scanner_mod

    real = scanner_mod.scan_candidate

    def crashing(cand, job):
        if any(cand.path.endswith(name) for name in crashers):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(cand, job)

    expected = norm(scan(copies, engine=ForkPoolEngine(1)))
    monkeypatch.setattr(scanner_mod, "scan_candidate", crashing)
    eng = ForkPoolEngine(2)
    got = norm(scan(copies, engine=eng))
    assert eng.stats.workers == 2

    def drop(items, where):
        return [x for x in items if not where(x).endswith(crashers)]

    assert len(drop(expected["artifacts"], lambda a: a["path"])) == len(expected["artifacts"]) - len(crashers)
    assert drop(got["artifacts"], lambda a: a["path"]) == drop(expected["artifacts"], lambda a: a["path"])
    assert drop(got["findings"], lambda f: f["location"]["artifact"]) == \
        drop(expected["findings"], lambda f: f["location"]["artifact"])
    blamed = [e for e in got["errors"] if "died while reading it" in e["message"]]
    assert sorted(Path(e["path"]).name for e in blamed) == sorted(crashers)
    assert all("tried 2 times" in e["message"] for e in blamed)
    assert drop(got["errors"], lambda e: e["path"]) == expected["errors"]  # broken.pb, as serially


def test_a_pool_parent_renders_rule_names_without_importing_the_rules(copies):
    """The workers name the rules of their findings in their records: the parent of a pool renders
    the JSON report (rule names included) without importing a rule module itself."""
    import json
    import subprocess
    import sys

    from modelwarden.analysis import registry

    code = ("import json, sys; from modelwarden.scanner import scan; from modelwarden.engine.local import ForkPoolEngine;"
            "from modelwarden.report.json_report import JsonRenderer;"
            f"r = scan([{str(copies)!r}], engine=ForkPoolEngine(2)); text = JsonRenderer().render(r);"
            "print(json.dumps([sorted(m for m in sys.modules if '.rules' in m), json.loads(text)['findings']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=120)
    imported, findings = json.loads(out.stdout)
    assert imported == []
    assert findings and all(f["rule_name"] == registry.meta(f["rule_id"]).name for f in findings)
    assert findings == norm(scan(copies, engine=ForkPoolEngine(1)))["findings"]


def test_a_record_naming_other_rules_than_its_findings_is_refused(copies):
    from modelwarden.engine import records
    from modelwarden.engine.interface import ScanJob
    from modelwarden.formats.detect import iter_discover
    from modelwarden.scanner import resolve_policy, scan_candidate

    cand = next(c for c in iter_discover([str(copies / "evil_savedmodel-00")], skipped=[], errors=[]))
    d = records.to_dict(scan_candidate(cand, ScanJob(resolve_policy(None))))
    assert d["names"] and records.from_dict(d).rule_names == d["names"]
    for names in ({}, {**d["names"], "MW999": "made-up"}, {k: 1 for k in d["names"]}):
        with pytest.raises(records.RecordError):
            records.from_dict({**d, "names": names})
    with pytest.raises(records.RecordError):
        records.from_dict({**d, "v": 1})  # a record of the version before names
