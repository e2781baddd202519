"""01_preprocess.py on a genome list (issue 15): NT's urls.csv format over HTTP (127.0.0.1), its
positional split, a withdrawn genome skipped, the bound on downloads kept, kill-and-rerun, --dry-run."""

import gzip
import hashlib
import json
import random
import sys

import pytest

import shelf.genomes
from conftest import ROOT, load_script
from shelf.config import load_config
from shelf.errors import UserError, run_main

pp = load_script("01_preprocess.py")
t02 = load_script("02_train_tokenizer.py")


def ncbi_like(http_server, n: int = 6, missing: int = 1) -> tuple[str, dict]:
    """n small gzip genomes laid out as on NCBI's FTP site (a folder per assembly, md5checksums.txt beside
    it), genome `missing` left out (withdrawn: 404), and a urls.csv listing all n as NT's does.
    -> (the CSV's URL, {genome name: its records})."""
    rng, urls, genomes = random.Random(7), [], {}
    for k in range(n):
        acc = f"GCF_{k:09d}.1_asm{k}"
        folder, name = http_server.root / "genomes" / "all" / acc, f"{acc}_genomic.fna.gz"
        urls.append(f"{http_server.url}/genomes/all/{acc}/{name}")
        if k == missing:
            continue
        records = [(f"NC_{k}.{r}", "".join(rng.choices("ACGT", k=rng.randint(2000, 6000)))) for r in range(2)]
        data = gzip.compress("".join(f">{h}\n{s}\n" for h, s in records).encode())
        folder.mkdir(parents=True)
        (folder / name).write_bytes(data)
        (folder / "md5checksums.txt").write_text(f"{hashlib.md5(data).hexdigest()}  ./{name}\n")
        genomes[f"{acc}_genomic"] = records
    (http_server.root / "urls.csv").write_text("Species,URL\n" + "".join(f"sp{k},{u}\n" for k, u in enumerate(urls)))
    return f"{http_server.url}/urls.csv", genomes


def run01(monkeypatch, out_dir, manifest, *args) -> dict:
    """01's main() in-process on `manifest` split as NT's (1 test, 1 val genome here); -> stats.json."""
    monkeypatch.setattr(sys, "argv", ["01_preprocess.py", f"--run.out_dir={out_dir}", "--preprocess.sources=[]",
                                      f"--preprocess.manifest={manifest}", "--preprocess.split_by=position",
                                      "--preprocess.val_genomes=1", "--preprocess.test_genomes=1",
                                      "--preprocess.min_len=50", "--preprocess.max_len=200", *args])
    pp.main()
    return json.loads((out_dir / "segments" / "stats.json").read_text())


def outputs(run) -> dict:
    """The split files, and stats.json without what differs between two equal runs (timings, paths)."""
    seg = run / "segments"
    stats = json.loads((seg / "stats.json").read_text())
    genomes = [{k: v for k, v in g.items() if k not in ("file", "seconds")} for g in stats.pop("genomes")]
    return {**{s: (seg / f"{s}.txt").read_bytes() for s in ("train", "val", "test")}, "genomes": genomes,
            **{k: v for k, v in stats.items() if k != "seconds"}}


def test_csv_manifest_streams_skips_a_withdrawn_genome_and_keeps_few_downloads(tmp_path, monkeypatch, capsys,
                                                                               http_server):
    url, genomes = ncbi_like(http_server)
    dl, peak, real_local_file = tmp_path / "dl", [], shelf.genomes.local_file

    def counting(*args):  # genome files on disk right after each download
        path = real_local_file(*args)
        peak.append(len(list(dl.glob("*.fna.gz"))))
        return path

    monkeypatch.setattr(shelf.genomes, "local_file", counting)
    stats = run01(monkeypatch, tmp_path / "run", url, f"--preprocess.download_dir={dl}",
                  "--preprocess.keep_downloads=2")
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning")] == [
        f"warning: {http_server.url}/genomes/all/GCF_000000001.1_asm1/GCF_000000001.1_asm1_genomic.fna.gz: "
        "HTTP 404 Not Found: skipped, recorded in stats.json"]
    entries = stats["genomes"]
    assert [g["split"] for g in entries] == ["train"] * 4 + ["val", "test"]  # NT's rule: by row, last test
    assert stats["genomes_missing"] == 1 and "HTTP 404" in entries[1]["missing"] and entries[1]["bp_read"] == 0
    assert stats["manifest_sha256"] == hashlib.sha256((http_server.root / "urls.csv").read_bytes()).hexdigest()
    assert max(peak) == 2 and len(peak) == 5 and len(list(dl.glob("*.fna.gz"))) == 2  # keep_downloads bounds the disk
    # every segment is a piece of a genome of its split; every base accounted for
    for split, names in (("train", [g["name"] for g in entries[:4]]), ("val", [entries[4]["name"]]),
                         ("test", [entries[5]["name"]])):
        text = "|".join(s for n in names if n in genomes for _, s in genomes[n])
        segs = (tmp_path / "run" / "segments" / f"{split}.txt").read_text().split()
        assert segs and len(segs) == stats["segments"][split] and all(s in text for s in segs)
    assert stats["bp_read"] == sum(len(s) for recs in genomes.values() for _, s in recs)
    assert stats["bp_kept"] + stats["bp_dropped"] == stats["bp_read"]


def test_positional_split_is_nts_and_max_genomes_takes_the_first_of_each(tmp_path):
    (tmp_path / "urls.csv").write_text("URL\n" + "".join(f"https://h/g{k}/g{k}.fna.gz\n" for k in range(120)))
    cfg, _ = load_config(["--config", str(ROOT / "configs" / "dnafm_7b.toml"),
                          f"--preprocess.manifest={tmp_path / 'urls.csv'}"])
    genomes, _ = pp.list_genomes(cfg.preprocess, None)
    splits = [g.split for g in genomes]
    assert splits == ["train"] * 20 + ["val"] * 50 + ["test"] * 50  # NT: urls[:-100], urls[-100:-50], urls[-50:]
    assert [g.name for g in genomes[:2]] == ["g0", "g1"] and genomes[0].source == "https://h/g0/g0.fna.gz"
    cfg.preprocess.max_genomes = 2
    assert [g.index for g in pp.list_genomes(cfg.preprocess, None)[0]] == [0, 1, 20, 21, 70, 71]
    # the preset names the pinned list (the revision that still holds urls.csv)
    preset, _ = load_config(["--config", str(ROOT / "configs" / "dnafm_7b.toml")])
    assert preset.preprocess.manifest == ("https://huggingface.co/datasets/InstaDeepAI/multi_species_genomes/resolve/"
                                          "d20c29a5f8087e880c53fd2a291a85275d978c38/urls.csv")


def test_kill_and_rerun_resumes_at_the_next_genome_with_identical_output(tmp_path, monkeypatch, http_server):
    url, _ = ncbi_like(http_server)
    run01(monkeypatch, tmp_path / "whole", url, f"--preprocess.download_dir={tmp_path / 'dl1'}")
    real_segment_genome = pp.segment_genome

    def killed_at_genome_4(genome, segmenter, writer):
        if genome.index == 3:  # appended, not yet in the ledger, when the process dies
            real_segment_genome(genome, segmenter, writer)
            writer.files["train"].flush()
            raise KeyboardInterrupt
        return real_segment_genome(genome, segmenter, writer)

    monkeypatch.setattr(pp, "segment_genome", killed_at_genome_4)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run01(monkeypatch, run, url, f"--preprocess.download_dir={tmp_path / 'dl2'}")
    ledger = json.loads((run / "segments" / "ledger.json").read_text())
    assert [g["name"] for g in ledger["genomes"]] == [f"GCF_00000000{k}.1_asm{k}_genomic" for k in range(3)]
    assert (run / "segments" / "train.txt").stat().st_size > ledger["genomes"][-1]["sizes"]["train"]
    with pytest.raises(UserError, match="has not finished"):  # 02 will not read half a corpus
        t02.find_segments(run / "segments")
    monkeypatch.setattr(pp, "segment_genome", real_segment_genome)
    http_server.requests.clear()
    run01(monkeypatch, run, url, f"--preprocess.download_dir={tmp_path / 'dl2'}")
    assert outputs(run) == outputs(tmp_path / "whole")
    fetched = {path.rsplit("/", 1)[-1] for path, _ in http_server.requests}
    assert not any(f"asm{k}_" in name for name in fetched for k in range(3))  # genomes 1-3 were done: not fetched
    # a rerun of a finished run changes nothing; another seed starts over
    run01(monkeypatch, run, url, f"--preprocess.download_dir={tmp_path / 'dl2'}")
    assert outputs(run) == outputs(tmp_path / "whole")
    run01(monkeypatch, run, url, f"--preprocess.download_dir={tmp_path / 'dl2'}", "--run.seed=5")
    assert outputs(run)["train"] != outputs(tmp_path / "whole")["train"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, capsys, http_server):
    url, _ = ncbi_like(http_server)
    monkeypatch.setattr(sys, "argv", ["01_preprocess.py", "--config", str(ROOT / "configs" / "dnafm_7b.toml"),
                                      f"--preprocess.manifest={url}", f"--run.out_dir={tmp_path / 'run'}",
                                      f"--preprocess.download_dir={tmp_path / 'dl'}", "--preprocess.val_genomes=1",
                                      "--preprocess.test_genomes=1", "--dry-run"])
    capsys.readouterr()
    run_main(pp.main)
    out = capsys.readouterr().out
    total = sum(p.stat().st_size for p in http_server.root.rglob("*.fna.gz"))
    assert "6 genomes: train 4, val 1, test 1" in out
    assert f"download: {total / 1e9:,.1f} GB, 5 genomes (1 of unknown size" in out
    assert "disk at peak:" in out and "keep_downloads = 4" in out and "time:" in out
    assert not (tmp_path / "run").exists() and not list((tmp_path / "dl").rglob("*.fna.gz"))
