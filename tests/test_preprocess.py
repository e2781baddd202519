"""01_preprocess.py: downloads, the streaming parser, the segmentation rule, splits, bad input.

Most runs call the script's main() in this process (fast: no second torch import); the runs that check
what a user sees (exit code, one-line error) go through `python 01_preprocess.py` as a user would.
"""

import gzip
import hashlib
import json
import random
import re
import socket
import sys
import time

import pytest

import shelf.fasta
from conftest import ROOT, load_script, main_as_user, run_script

pp = load_script("01_preprocess.py")

SLICE = "genome/hg38_chr2_1-2333275.fa.gz"


def run01(monkeypatch, out_dir, *args) -> dict:
    """Run 01's main() in-process with `--run.out_dir=out_dir` plus args; return stats.json."""
    monkeypatch.setattr(sys, "argv", ["01_preprocess.py", f"--run.out_dir={out_dir}", *args])
    pp.main()
    return json.loads((out_dir / "segments" / "stats.json").read_text())


def run01_as_user(monkeypatch, capsys, out_dir, *args) -> tuple[int, str]:
    return main_as_user(monkeypatch, capsys, "01_preprocess.py", pp.main, f"--run.out_dir={out_dir}", *args)


def segments(out_dir, split="train") -> list[str]:
    path = out_dir / "segments" / f"{split}.txt"
    return path.read_text().split("\n")[:-1] if path.stat().st_size else []


def snapshot(out_dir) -> dict:
    return {p.name: p.read_bytes() for p in sorted((out_dir / "segments").iterdir())}


def assert_segments_follow_the_rule(segs: list[str], sequence: str, min_len: int, max_len: int):
    """segs (in file order, one split) tile every A/C/G/T stretch of `sequence` (one record's text) from
    its start, leaving only a tail under min_len: so no segment crosses an N or any other non-ACGT."""
    i = 0
    for m in re.finditer(r"[ACGT]+", sequence.upper()):
        p, stretch = 0, m.group()
        while i < len(segs) and stretch.startswith(segs[i], p):
            assert min_len <= len(segs[i]) <= max_len and set(segs[i]) <= set("ACGT")
            p += len(segs[i])
            i += 1
        assert len(stretch) - p < min_len, f"stretch at {m.start()}: {len(stretch) - p} bp left uncut"
    assert i == len(segs), "a segment that is not the next piece of a stretch"


# -----------------------------------------------------------------------------
# parser edge cases, each with its exact segments (min_len = max_len = 4: no randomness in the cuts)

EDGE_CASES = {
    "lower case is upper-cased": (">r\nacgtACGTacgt\n", ["ACGT"] * 3, {}),
    "N ends a stretch, short tail dropped": (">r\nACGTNACGTAC\n", ["ACGT"] * 2, {"n_bp": 1, "bp_dropped": 2}),
    "IUPAC codes end stretches": (">r\nACGTRACGTyACGT\n", ["ACGT"] * 3, {"other_bp": 2}),
    "CRLF line ends": (">r\r\nACG\r\nTAC\r\nGT\r\n", ["ACGT"] * 2, {"bp_read": 8}),
    "blank lines and spaces": (">r\n\nAC GT\n\n\tAC\nGT \n\n", ["ACGT"] * 2, {"bp_read": 8}),
    "wrapped = one long line": (">r\n" + "ACGTTGCA" * 50 + "\n", ["ACGT", "TGCA"] * 50, {}),
    "header with spaces": (">chr1 Homo sapiens, chromosome 1\nTTTT\n", ["TTTT"], {"records": 1}),
    "records end stretches": (">a\nACG\n>b\nTACGT\n", ["TACG"], {"records": 2, "bp_dropped": 4}),
    "empty records are counted": (">a\n>b\nGGGG\n>c\n\n>d", ["GGGG"], {"records": 4, "empty_records": 3}),
    "'>' inside a line is not a header": (">r\nACGT>CCCC\n", ["ACGT", "CCCC"], {"records": 1, "other_bp": 1}),
    "other characters (gaps, digits)": (">r\nAAAA-CCCC*GGGG7TTTT\n", ["AAAA", "CCCC", "GGGG", "TTTT"], {"other_bp": 3}),
    "no final newline": (">r\nACGTACGT", ["ACGT"] * 2, {}),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_parser_edge_cases(case, tmp_path, monkeypatch):
    text, expected, expected_stats = EDGE_CASES[case]
    fa = tmp_path / "in.fa"
    fa.write_bytes(text.encode())
    stats = run01(monkeypatch, tmp_path / "run", f"--preprocess.sources=['{fa}']", "--preprocess.min_len=4",
                  "--preprocess.max_len=4", "--preprocess.val_fraction=0.0")
    assert segments(tmp_path / "run") == expected
    assert segments(tmp_path / "run", "val") == []
    for key, value in expected_stats.items():
        assert stats[key] == value, key
    assert stats["bp_kept"] + stats["bp_dropped"] + stats["n_bp"] + stats["other_bp"] == stats["bp_read"]


# -----------------------------------------------------------------------------
# the segmentation rule and streaming, on a messy synthetic genome


def messy_genome(seed: int = 0) -> list[tuple[str, str]]:
    """Records with soft-masking, N runs, IUPAC codes, short stretches and an empty record."""
    rng = random.Random(seed)
    records = []
    for k in range(5):
        parts = []
        for _ in range(rng.randint(5, 30)):
            kind = rng.random()
            if kind < 0.6:
                parts.append("".join(rng.choice("ACGTacgt") for _ in range(rng.randint(1, 400))))
            elif kind < 0.8:
                parts.append("N" * rng.randint(1, 60))
            else:
                parts.append(rng.choice("RYKMSWnBDHV"))
        records.append((f"rec{k} some description", "".join(parts)))
    records.insert(2, ("empty", ""))
    return records


def write_fasta(path, records, width=60, eol="\n", members=1):
    text = "".join(f">{h}{eol}" + "".join(s[i:i + width] + eol for i in range(0, len(s), width))
                   for h, s in records).encode()
    if path.suffix == ".gz":  # members > 1: concatenated gzip members, as bgzip writes
        step = -(-len(text) // members)
        text = b"".join(gzip.compress(text[i:i + step]) for i in range(0, len(text), step))
    path.write_bytes(text)
    return path


def test_segments_follow_the_rule_whatever_the_chunk_size_or_compression(tmp_path, monkeypatch):
    records = messy_genome()
    args = ["--preprocess.min_len=20", "--preprocess.max_len=50", "--preprocess.val_fraction=0.0"]
    plain = write_fasta(tmp_path / "g.fa", records, width=60)
    stats = run01(monkeypatch, tmp_path / "ref", f"--preprocess.sources=['{plain}']", *args)
    ref = segments(tmp_path / "ref")
    # the rule, checked against the text: records are separate stretches, so join them with a non-base
    assert_segments_follow_the_rule(ref, "|".join(seq for _, seq in records), 20, 50)
    lengths = [len(s) for s in ref]
    assert min(lengths) == 20 and max(lengths) == 50  # both ends of [min_len, max_len] are drawn
    assert stats["empty_records"] == 1 and stats["records"] == 6
    # the same bytes for tiny chunks (every boundary case), other line widths, CRLF, bgzip-style gzip
    for chunk, path in [(1, plain), (7, plain), (64, write_fasta(tmp_path / "g80.fa", records, width=80, eol="\r\n")),
                        (4096, write_fasta(tmp_path / "g.fa.gz", records, width=1000, members=3))]:
        monkeypatch.setattr(shelf.fasta, "CHUNK", chunk)
        run01(monkeypatch, tmp_path / f"c{chunk}", f"--preprocess.sources=['{path}']", *args)
        assert segments(tmp_path / f"c{chunk}") == ref, f"chunk size {chunk}, {path.name}"


def test_same_seed_same_bytes_other_seed_different(tmp_path, monkeypatch):
    fa = write_fasta(tmp_path / "g.fa", messy_genome(1) * 3)
    args = [f"--preprocess.sources=['{fa}']", "--preprocess.min_len=20", "--preprocess.max_len=60",
            "--preprocess.val_fraction=0.2"]
    run01(monkeypatch, tmp_path / "a", *args)
    run01(monkeypatch, tmp_path / "a", *args)  # re-running into the same folder replaces, never appends
    run01(monkeypatch, tmp_path / "b", *args)
    run01(monkeypatch, tmp_path / "c", *args, "--run.seed=7")
    a, b, c = (snapshot(tmp_path / d) for d in "abc")
    for name in ("train.txt", "val.txt"):
        assert a[name] == b[name]
        assert a[name] != c[name]
    assert segments(tmp_path / "a", "val"), "a seeded share of segments is held out"


def test_a_genome_is_cut_by_its_place_in_the_list_as_source_or_in_a_manifest(tmp_path, monkeypatch):
    paths = [write_fasta(tmp_path / f"g{k}.fa", messy_genome(k)) for k in range(3)]
    args = ["--preprocess.min_len=20", "--preprocess.max_len=60", "--preprocess.val_fraction=0.2"]
    a = run01(monkeypatch, tmp_path / "a", f"--preprocess.sources={[str(p) for p in paths]}", *args)
    (tmp_path / "genomes.tsv").write_text("".join(f"g{k}\t{p}\n" for k, p in enumerate(paths)))
    run01(monkeypatch, tmp_path / "b", "--preprocess.sources=[]", f"--preprocess.manifest={tmp_path / 'genomes.tsv'}",
          *args)  # no val or test genomes: split by segment, as sources are
    for name in ("train.txt", "val.txt"):
        assert snapshot(tmp_path / "a")[name] == snapshot(tmp_path / "b")[name], name
    # the third genome's streams are its own: another second genome leaves its segments as they were
    paths[1] = write_fasta(tmp_path / "other.fa", messy_genome(9))
    c = run01(monkeypatch, tmp_path / "c", f"--preprocess.sources={[str(p) for p in paths]}", *args)
    assert c["genomes"][1]["segments"] != a["genomes"][1]["segments"]
    for split in ("train", "val"):
        n = a["genomes"][2]["segments"][split]
        assert n and segments(tmp_path / "c", split)[-n:] == segments(tmp_path / "a", split)[-n:]


def test_val_split_is_a_random_share_not_the_end(tmp_path, monkeypatch):
    rng = random.Random(2)
    units = ["".join(rng.choice("ACGT") for _ in range(10)) for _ in range(20)]  # one 10-mer per record
    fa = write_fasta(tmp_path / "g.fa", [(f"r{k}", unit * 1000) for k, unit in enumerate(units)])
    stats = run01(monkeypatch, tmp_path / "run", f"--preprocess.sources=['{fa}']", "--preprocess.min_len=10",
                  "--preprocess.max_len=10", "--preprocess.val_fraction=0.1")
    n_val, n_train = stats["segments"]["val"], stats["segments"]["train"]
    assert 0.07 < n_val / (n_val + n_train) < 0.13  # 20,000 segments: 10% +- 3 s.d.
    assert set(segments(tmp_path / "run", "val")) == set(units)  # drawn from every record, not the last ones


# -----------------------------------------------------------------------------
# the real slice of hg38 chr2


def test_real_slice_accounting_and_the_telomere_gap(shared_data, tmp_path, monkeypatch):
    path = shared_data / SLICE
    stats = run01(monkeypatch, tmp_path / "run", f"--preprocess.sources=['{path}']", "--preprocess.val_fraction=0")
    assert stats["bp_read"] == 2_333_275
    assert stats["bp_kept"] + stats["bp_dropped"] + stats["n_bp"] + stats["other_bp"] == 2_333_275
    assert stats["n_bp"] == 10_000 and stats["records"] == 1
    segs = segments(tmp_path / "run")
    sequence = "".join(gzip.open(path, "rt").read().split("\n")[1:])
    assert sequence[:10_000] == "N" * 10_000
    # every segment is the next piece of an N-free stretch: none crosses the 10 kb N run
    assert_segments_follow_the_rule(segs, sequence, 256, 1024)
    assert segs[0] == sequence[10_000:10_000 + len(segs[0])].upper()  # the first starts right after the run
    assert sum(stats["length_histogram"]["counts"]) == len(segs) == stats["segments"]["train"]


def test_demo_preset_end_to_end_as_a_user(tmp_path):
    run = tmp_path / "demo"
    result = run_script("01_preprocess.py", "--config", str(ROOT / "configs" / "demo.toml"), f"--run.out_dir={run}")
    assert result.returncode == 0, result.stderr
    stats = json.loads((run / "segments" / "stats.json").read_text())
    assert stats["records"] == 5 and stats["empty_records"] == 1
    assert stats["n_bp"] > 10_000 and stats["other_bp"] > 0  # N runs and IUPAC codes were there
    assert 1_000_000 < stats["bp_kept"] < 2_000_000 and stats["segments"]["val"] > 0
    demo = (run / "genome" / "demo.fa").read_bytes()
    assert b"\r\n" in demo and any(c in demo for c in b"acgt")  # CRLF record, soft-masked repeats
    for split in ("train", "val"):
        for seg in segments(run, split):
            assert 256 <= len(seg) <= 1024 and not seg.strip("ACGT")
    assert (run / "segments" / "segment_lengths.png").stat().st_size > 0
    assert (run / "segments" / "config.toml").is_file()
    assert "bp read" in result.stdout and "segments train" in result.stdout


# -----------------------------------------------------------------------------
# bad input: one-line error naming the file, exit 1, earlier outputs untouched


def bad_inputs(tmp_path):
    garbage = random.Random(3).randbytes(4096)
    good_gz = gzip.compress((">r\n" + "ACGT" * 5000 + "\n").encode())
    return {
        "empty.fa": (b"", "empty file"),
        "blank.fa": (b"\n\n  \n", "empty file"),
        "noheader.fa": (b"ACGTACGT\nACGT\n", "expected a FASTA header"),
        "garbage.bin": (b"\x00" + garbage, "expected a FASTA header"),
        "garbage_after_header.fa": (b">r\nACGT" + garbage, "binary byte"),
        "truncated.fa.gz": (good_gz[:len(good_gz) // 2], "truncated or corrupt gzip"),
        "corrupt.fa.gz": (good_gz[:40] + bytes(64) + good_gz[104:], "corrupt gzip"),
        "bad_crc.fa.gz": (good_gz[:-8] + bytes(4) + good_gz[-4:], "corrupt gzip"),
    }


def test_bad_input_is_one_line_exit_1_and_earlier_outputs_untouched(tmp_path, monkeypatch, capsys):
    good = write_fasta(tmp_path / "good.fa", [("r", "ACGT" * 1000)])
    run = tmp_path / "run"
    run01(monkeypatch, run, f"--preprocess.sources=['{good}']")
    before = snapshot(run)
    for name, (data, message) in bad_inputs(tmp_path).items():
        bad = tmp_path / name
        bad.write_bytes(data)
        code, err = run01_as_user(monkeypatch, capsys, run, f"--preprocess.sources=['{good}', '{bad}']")
        assert code == 1, name
        assert err.count("\n") == 1 and err.startswith("error: ") and str(bad) in err and message in err, err
        assert snapshot(run) == before, f"{name}: earlier outputs changed"


def test_truncated_gzip_as_a_user(tmp_path, monkeypatch):
    good = write_fasta(tmp_path / "good.fa", [("r", "ACGT" * 1000)])
    run = tmp_path / "run"
    run01(monkeypatch, run, f"--preprocess.sources=['{good}']")
    before = snapshot(run)
    data = gzip.compress((">r\n" + "ACGT" * 5000 + "\n").encode())
    bad = tmp_path / "cut.fa.gz"
    bad.write_bytes(data[:len(data) // 2])
    result = run_script("01_preprocess.py", f"--preprocess.sources=['{bad}']", f"--run.out_dir={run}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert str(bad) in result.stderr and "Traceback" not in result.stderr
    assert snapshot(run) == before


def test_missing_file_and_missing_manifest_are_clear(tmp_path, monkeypatch, capsys):
    code, err = run01_as_user(monkeypatch, capsys, tmp_path / "r", f"--preprocess.sources=['{tmp_path}/nope.fa']")
    assert code == 1 and "nope.fa: no such file" in err
    code, err = run01_as_user(monkeypatch, capsys, tmp_path / "r", "--preprocess.sources=[]",
                              f"--preprocess.manifest={tmp_path}/genomes.tsv")
    assert code == 1 and "manifest not found" in err and "name<TAB>url or path" in err


# -----------------------------------------------------------------------------
# many genomes: a manifest split by genome


def test_manifest_splits_by_genome(tmp_path, monkeypatch, http_server):
    rng = random.Random(5)
    genomes = {f"g{k}": "".join(rng.choice("ACGT") for _ in range(3000)) for k in range(8)}
    lines = ["# name<TAB>source<TAB>md5", ""]
    for name, seq in genomes.items():
        path = write_fasta(tmp_path / f"{name}.fa", [(name, seq)])
        if name == "g0":  # one genome over HTTP, with its checksum
            (http_server.root / path.name).write_bytes(path.read_bytes())
            lines.append(f"{name}\t{http_server.url}/{path.name}\t{hashlib.md5(path.read_bytes()).hexdigest()}")
        else:
            lines.append(f"{name}\t{path.name}")  # relative to the manifest
    manifest = tmp_path / "genomes.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    stats = run01(monkeypatch, run, "--preprocess.sources=[]", f"--preprocess.manifest={manifest}",
                  "--preprocess.val_genomes=0.25", "--preprocess.test_genomes=0.25", "--preprocess.min_len=50",
                  "--preprocess.max_len=100", f"--preprocess.download_dir={tmp_path / 'dl'}")
    split_of = {g["name"]: g["split"] for g in stats["genomes"]}
    assert sorted(split_of.values()) == ["test"] * 2 + ["train"] * 4 + ["val"] * 2
    for split in ("train", "val", "test"):
        segs = segments(run, split)
        assert segs and len(segs) == stats["segments"][split]
        for seg in segs:  # every segment comes from a genome of this split (3 kb random: unique)
            assert [n for n, s in genomes.items() if seg in s] and all(
                split_of[n] == split for n, s in genomes.items() if seg in s)
    # the split is seeded: another seed, another split of the same genomes
    other = run01(monkeypatch, tmp_path / "run2", "--preprocess.sources=[]", f"--preprocess.manifest={manifest}",
                  "--preprocess.val_genomes=0.25", "--preprocess.test_genomes=0.25", "--run.seed=99",
                  f"--preprocess.download_dir={tmp_path / 'dl'}")
    assert {g["name"]: g["split"] for g in other["genomes"]} != split_of


# -----------------------------------------------------------------------------
# downloads against a local HTTP server


def served_genome(http_server, name="genome.fa.gz", n_records=4, md5_file=True):
    rng = random.Random(11)
    records = [(f"chr{k}", "".join(rng.choice("ACGTacgt") for _ in range(20_000)) + "N" * 100 + "ACGT" * 100)
               for k in range(n_records)]
    path = write_fasta(http_server.root / name, records)
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    if md5_file:  # NCBI's format
        (http_server.root / "md5checksums.txt").write_text(f"0123  ./other.fna.gz\n{digest}  ./{name}\n")
    return f"{http_server.url}/{name}", path.read_bytes(), digest


def test_download_full_verified_then_never_again(tmp_path, monkeypatch, http_server):
    url, data, digest = served_genome(http_server)
    dl = tmp_path / "dl"
    args = [f"--preprocess.sources=['{url}']", f"--preprocess.download_dir={dl}"]
    stats = run01(monkeypatch, tmp_path / "run", *args)
    assert (dl / "genome.fa.gz").read_bytes() == data
    assert (dl / "genome.fa.gz.md5").read_text().split()[0] == digest
    assert not (dl / "genome.fa.gz.part").exists()
    assert sorted(r[0] for r in http_server.requests) == ["genome.fa.gz", "md5checksums.txt"]  # NCBI's checksum
    assert stats["segments"]["train"] > 0 and stats["records"] == 4
    run01(monkeypatch, tmp_path / "run", *args)
    assert len(http_server.requests) == 2  # verified once: no second download, not even the checksum


def test_download_cut_half_way_is_resumed_with_range(tmp_path, monkeypatch, http_server):
    url, data, digest = served_genome(http_server, md5_file=False)
    http_server.cut_after["genome.fa.gz"] = len(data) // 2
    dl = tmp_path / "dl"
    run01(monkeypatch, tmp_path / "run", f"--preprocess.sources=['{url}']", f"--preprocess.md5=['{digest}']",
          f"--preprocess.download_dir={dl}")
    assert http_server.requests == [("genome.fa.gz", None), ("genome.fa.gz", f"bytes={len(data) // 2}-")]
    assert (dl / "genome.fa.gz").read_bytes() == data


def test_download_resumes_a_part_file_left_by_a_killed_run(tmp_path, http_server):
    from shelf.files import download

    url, data, digest = served_genome(http_server, md5_file=False)
    dest = tmp_path / "dl" / "genome.fa.gz"
    dest.parent.mkdir()
    (tmp_path / "dl" / "genome.fa.gz.part").write_bytes(data[:1000])
    assert download(url, dest, md5=digest, quiet=True) == dest
    assert http_server.requests == [("genome.fa.gz", "bytes=1000-")]
    assert dest.read_bytes() == data


def test_download_wrong_checksum_is_an_error_and_the_file_is_not_used(tmp_path, monkeypatch, http_server):
    url, data, digest = served_genome(http_server, md5_file=False)
    dl, run = tmp_path / "dl", tmp_path / "run"
    good = write_fasta(tmp_path / "good.fa", [("r", "ACGT" * 1000)])
    run01(monkeypatch, run, f"--preprocess.sources=['{good}']")
    before = snapshot(run)
    result = run_script("01_preprocess.py", f"--preprocess.sources=['{url}']", "--preprocess.md5=['" + "0" * 32 + "']",
                        f"--preprocess.download_dir={dl}", f"--run.out_dir={run}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert url in result.stderr and "md5 mismatch" in result.stderr and digest in result.stderr
    assert not any(dl.iterdir())  # neither the file, nor a .part, nor a .md5 sidecar
    assert snapshot(run) == before


def test_download_md5checksums_mismatch_and_404(tmp_path, monkeypatch, capsys, http_server):
    url, data, digest = served_genome(http_server)
    (http_server.root / "md5checksums.txt").write_text(f"{'f' * 32}  ./genome.fa.gz\n")
    code, err = run01_as_user(monkeypatch, capsys, tmp_path / "run", f"--preprocess.sources=['{url}']",
                              f"--preprocess.download_dir={tmp_path / 'dl'}")
    assert code == 1 and "md5 mismatch" in err and not (tmp_path / "dl" / "genome.fa.gz").exists()
    code, err = run01_as_user(monkeypatch, capsys, tmp_path / "run", f"--preprocess.sources=['{http_server.url}/no.fa']",
                              f"--preprocess.download_dir={tmp_path / 'dl'}")
    assert code == 1 and "HTTP 404" in err and err.count("\n") == 1


# -----------------------------------------------------------------------------
# offline, a directory, an unreadable file, a file in the way, a killed run's temp files: one line each


def test_offline_fails_at_once_and_says_what_to_do(tmp_path, monkeypatch, capsys):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url, dl = "https://ftp.ncbi.nlm.nih.gov/genomes/x/genome.fna.gz", tmp_path / "dl"
    for md5 in ("[]", f"['{'0' * 32}']"):  # the checksum list beside the URL first; or, md5 given, the download
        t0 = time.perf_counter()
        code, err = run01_as_user(monkeypatch, capsys, tmp_path / "run", f"--preprocess.sources=['{url}']",
                                  f"--preprocess.md5={md5}", f"--preprocess.download_dir={dl}")
        assert code == 1 and err.count("\n") == 1 and time.perf_counter() - t0 < 5, err  # not 5 retries over 31 s
        assert "cannot resolve the host name" in err and "--preprocess.sources" in err and "configs/demo.toml" in err
        assert ".part" not in err  # no partial download to resume: none is mentioned
    dl.mkdir(exist_ok=True)
    (dl / "genome.fna.gz.part").write_bytes(b"half")
    code, err = run01_as_user(monkeypatch, capsys, tmp_path / "run", f"--preprocess.sources=['{url}']",
                              f"--preprocess.md5=['{'0' * 32}']", f"--preprocess.download_dir={dl}")
    assert code == 1 and err.count("\n") == 1 and f"re-run to resume from {dl / 'genome.fna.gz.part'}" in err


def test_directory_unreadable_file_and_out_dir_a_file_are_one_line(tmp_path, monkeypatch, capsys):
    good = write_fasta(tmp_path / "good.fa", [("r", "ACGT" * 1000)])
    code, err = run01_as_user(monkeypatch, capsys, tmp_path / "run", f"--preprocess.sources=['{tmp_path}']")
    assert code == 1 and err == f"error: {tmp_path}: a directory, not a FASTA file\n"
    (tmp_path / "file").write_text("x")
    code, err = run01_as_user(monkeypatch, capsys, tmp_path / "file", f"--preprocess.sources=['{good}']")
    assert code == 1 and err.count("\n") == 1 and f"{tmp_path / 'file'}/segments: cannot create the output" in err
    real_open = open

    def no_permission(path, *args, **kwargs):  # as root (CI) chmod 000 cannot make a file unreadable
        if str(path) == str(good):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(shelf.fasta, "open", no_permission, raising=False)
    code, err = run01_as_user(monkeypatch, capsys, tmp_path / "run", f"--preprocess.sources=['{good}']")
    assert code == 1 and err == f"error: {good}: cannot read (Permission denied)\n"


def test_temp_files_of_a_killed_run_are_removed(tmp_path, monkeypatch):
    good = write_fasta(tmp_path / "good.fa", [("r", "ACGT" * 1000)])
    seg = tmp_path / "run" / "segments"
    seg.mkdir(parents=True)
    (seg / ".train.txt.k1ll3d.tmp").write_bytes(b"ACGT" * 1000)  # SIGKILL skips atomic_write's cleanup
    run01(monkeypatch, tmp_path / "run", f"--preprocess.sources=['{good}']")
    assert sorted(p.name for p in seg.iterdir()) == ["config.toml", "segment_lengths.png", "stats.json",
                                                    "train.txt", "val.txt"]
