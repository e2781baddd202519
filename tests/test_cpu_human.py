"""configs/cpu_human.toml: its model's size, its whole path 01 -> 04 on real DNA (the hg38 chr2 slice and the
promoter_core task of ../shared/data, the preset shrunk to seconds), and UCSC's md5sum.txt beside its download."""

import csv
import json

from model import MaskedLM, num_parameters
from shelf.config import load_config
from conftest import ROOT, run_script
from test_preprocess import SLICE, run01, run01_as_user, served_genome, snapshot, write_fasta

CPU_HUMAN = str(ROOT / "configs" / "cpu_human.toml")


def test_preset_is_a_laptop_sized_real_dna_experiment():
    cfg, _ = load_config(["--config", CPU_HUMAN])
    assert 3_000_000 < num_parameters(MaskedLM(cfg.model)) < 4_000_000  # demo 0.5M < this < tinydnabert 20M
    assert cfg.preprocess.sources == ["https://hgdownload.soe.ucsc.edu/goldenPath/hg38/chromosomes/chr21.fa.gz"]
    assert cfg.preprocess.md5 == []  # checked against md5sum.txt beside it
    assert cfg.tokenizer.vocab_size == cfg.model.vocab_size and cfg.pretrain.seq_len <= cfg.model.max_seq_len
    assert cfg.run.device == "cpu" and cfg.finetune.benchmark == "local"
    assert cfg.finetune.train_sizes == [64, 256, 1024, 0] and cfg.finetune.num_seeds == 3


def test_real_dna_path_end_to_end_shrunk(tmp_path, shared_data):
    run = tmp_path / "run"
    small_model = ["--model.hidden_size=64", "--model.num_layers=2", "--model.num_heads=2", "--model.ffn_size=256"]
    for script, *args in [
        ("01_preprocess.py", f"--preprocess.sources=[{shared_data / SLICE}]"),
        ("02_train_tokenizer.py",),
        ("03_pretrain.py", *small_model, "--pretrain.max_steps=20", "--pretrain.warmup_steps=2",
         "--pretrain.eval_interval=10", "--pretrain.ckpt_interval=20"),
        ("04_finetune_nt.py", *small_model, f"--finetune.data_dir={shared_data / 'tasks'}",
         "--finetune.tasks=[promoter_core]", "--finetune.train_sizes=[64,0]", "--finetune.num_seeds=1",
         "--finetune.max_steps=20", "--finetune.warmup_steps=2", "--finetune.eval_interval=10"),
    ]:
        r = run_script(script, "--config", CPU_HUMAN, f"--run.out_dir={run}", *args)
        assert r.returncode == 0, f"{script}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert json.loads((run / "segments" / "stats.json").read_text())["bp_read"] == 2_333_275
    with open(run / "finetune" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(x["init"], x["train_size"]) for x in rows] == [
        (init, size) for init in ("pretrained", "scratch") for size in ("64", "0")]
    for x in rows:
        assert x["task"] == "promoter_core" and int(x["n_test"]) == 1183  # every test sequence scored
        assert -1 <= float(x["probe_test_mcc"]) <= 1 and -1 <= float(x["test_mcc"]) <= 1
    assert (run / "finetune" / "mcc_vs_labels.png").stat().st_size > 1000


def test_ucsc_md5sum_txt_verifies_the_download(tmp_path, monkeypatch, http_server):
    url, data, digest = served_genome(http_server, name="chr21.fa.gz", md5_file=False)
    (http_server.root / "md5sum.txt").write_text(f"0123  chr20.fa.gz\n{digest}  chr21.fa.gz\n")  # UCSC's format
    dl = tmp_path / "dl"
    run01(monkeypatch, tmp_path / "run", "--config", CPU_HUMAN, f"--preprocess.sources=['{url}']",
          f"--preprocess.download_dir={dl}")
    assert (dl / "chr21.fa.gz").read_bytes() == data
    assert (dl / "chr21.fa.gz.md5").read_text().split()[0] == digest
    assert [r[0] for r in http_server.requests] == ["md5checksums.txt", "md5sum.txt", "chr21.fa.gz"]  # NCBI's: 404


def test_ucsc_md5sum_txt_mismatch_is_an_error_and_nothing_is_kept(tmp_path, monkeypatch, capsys, http_server):
    url, data, digest = served_genome(http_server, name="chr21.fa.gz", md5_file=False)
    (http_server.root / "md5sum.txt").write_text(f"{'f' * 32}  chr21.fa.gz\n")
    dl, run = tmp_path / "dl", tmp_path / "run"
    run01(monkeypatch, run, f"--preprocess.sources=['{write_fasta(tmp_path / 'good.fa', [('r', 'ACGT' * 1000)])}']")
    before = snapshot(run)
    code, err = run01_as_user(monkeypatch, capsys, run, "--config", CPU_HUMAN, f"--preprocess.sources=['{url}']",
                              f"--preprocess.download_dir={dl}")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert url in err and "md5 mismatch" in err and digest in err
    assert not any(dl.iterdir())  # neither the file, nor a .part, nor a .md5 sidecar
    assert snapshot(run) == before
