"""
Benchmark of a genome list (issue 15): 01_preprocess.py streaming a CSV manifest of many genomes from a
local HTTP server (download, md5 from md5checksums.txt beside each, segment, append, ledger; at most
keep_downloads=2 genomes on disk), then 02_train_tokenizer.py encoding the corpus with the char tokenizer
(dnafm_7b's). Throughput and peak RSS at two corpus sizes: memory must stay flat as the corpus grows.

    python bench/bench_genome_list.py                 # 0.1 and 0.3 Gbp, 20 Mbp genomes (~2 GB temp space, minutes)
    python bench/bench_genome_list.py --gbp 1         # 0.1 and 1 Gbp (~5 GB temp space)
    python bench/bench_genome_list.py --gbp 0.04 --small-gbp 0.02 --genome-mbp 5   # a quick look

Genomes are bench_preprocess.make_genome's (assembly-shaped, gzip -1), a fresh seed each. Each script
runs once per size in its own process; wall seconds include its start-up (imports torch, ~2-3 s); peak
RSS is that process's own (ru_maxrss). Writes bench/results/genome_list.csv.
"""

import hashlib
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import conftest, format_table, load_str, machine_info, row, two_sizes, write_rows
from bench_preprocess import make_genome, timed


def serve(root: Path) -> str:
    """conftest's 127.0.0.1 server (Range requests honoured) in a thread; -> its URL."""
    server = conftest.LocalServer(root=root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), conftest._make_handler(server))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def make_genome_list(root: Path, url: str, gbp: float, genome_mbp: float) -> str:
    """NCBI-like folders of gzip genomes with md5checksums.txt, and NT's urls.csv listing them -> its URL."""
    lines = ["URL"]
    for k in range(max(3, round(gbp * 1000 / genome_mbp))):  # >= 3: a train, a val and a test genome
        acc = f"GCF_{k:09d}.1_bench"
        folder, name = root / acc, f"{acc}_genomic.fna.gz"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / name).is_file():  # the small list's genomes are the large one's first
            make_genome(folder / name, genome_mbp, seed=k)
            digest = hashlib.md5((folder / name).read_bytes()).hexdigest()
            (folder / "md5checksums.txt").write_text(f"{digest}  ./{name}\n")
        lines.append(f"{url}/{acc}/{name}")
    (root / f"urls_{gbp:g}.csv").write_text("\n".join(lines) + "\n")
    return f"{url}/urls_{gbp:g}.csv"


def run_size(tmp: Path, manifest: str, gbp: float) -> dict:
    run = tmp / f"run_{gbp:g}"
    common = ["--config", "configs/dnafm_7b.toml", f"--run.out_dir={run}"]
    wall1, cpu1, rss1 = timed([sys.executable, "01_preprocess.py", *common, f"--preprocess.manifest={manifest}",
                               "--preprocess.val_genomes=1", "--preprocess.test_genomes=1",
                               "--preprocess.keep_downloads=2", f"--preprocess.download_dir={tmp / 'dl'}"])
    stats = json.loads((run / "segments" / "stats.json").read_text())
    wall2, cpu2, rss2 = timed([sys.executable, "02_train_tokenizer.py", *common])
    tokens = json.loads((run / "tokens" / "meta.json").read_text())["splits"]
    bp, seg_bytes = stats["bp_read"], sum((run / "segments" / f"{s}.txt").stat().st_size for s in stats["segments"])
    result = {"gbp": gbp, "genomes": len(stats["genomes"]), "bp_read": bp, "segments_gb": round(seg_bytes / 1e9, 3),
              "tokens": sum(s["tokens"] for s in tokens.values()),
              "pp_s": round(wall1, 1), "pp_cpu_s": round(cpu1, 1), "pp_mbp_s": round(bp / 1e6 / wall1, 1),
              "pp_parse_mbp_s": round(bp / 1e6 / max(stats["seconds"], 1e-9), 1), "pp_rss_mib": round(rss1),
              "tok_s": round(wall2, 1), "tok_cpu_s": round(cpu2, 1), "tok_mbp_s": round(bp / 1e6 / wall2, 1),
              "tok_rss_mib": round(rss2), "load_avg_1m": round(os.getloadavg()[0], 2)}
    for split in ("train", "val", "test"):  # leave the disk as the next size needs it
        for path in (run / "segments" / f"{split}.txt", run / "tokens" / f"{split}.bin"):
            path.unlink(missing_ok=True)
    return result


def main():
    args = two_sizes(__doc__, "gbp", 0.3, 0.1, "corpus", ("--genome-mbp", 20.0, "size of each genome, Mbp"))

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_genome_list_") as tmp:
        tmp = Path(tmp)
        (tmp / "www").mkdir()
        url = serve(tmp / "www")
        for gbp in (args.small_gbp, args.gbp):
            t0 = time.perf_counter()
            manifest = make_genome_list(tmp / "www", url, gbp, args.genome_mbp)
            print(f"made {gbp:g} Gbp of genomes in {time.perf_counter() - t0:.0f} s; running 01 and 02", flush=True)
            results.append(run_size(tmp, manifest, gbp))

    print(f"\n{'Gbp':>5} {'genomes':>7} {'01 s':>7} {'01 Mbp/s':>9} {'parse Mbp/s':>11} {'01 RSS MiB':>10} "
          f"{'02 s':>7} {'02 Mbp/s':>9} {'02 RSS MiB':>10} {'load':>5}")
    for r in results:
        print(f"{r['gbp']:>5g} {r['genomes']:>7} {r['pp_s']:>7.1f} {r['pp_mbp_s']:>9.1f} {r['pp_parse_mbp_s']:>11.1f} "
              f"{r['pp_rss_mib']:>10,} {r['tok_s']:>7.1f} {r['tok_mbp_s']:>9.1f} {r['tok_rss_mib']:>10,} "
              f"{r['load_avg_1m']:>5.1f}")
    small, big = results
    rows = [row("6", f"01_preprocess peak RSS, genome list {big['gbp']:g} / {small['gbp']:g} Gbp",
                f"{small['pp_rss_mib']:,} MiB", f"{big['pp_rss_mib']:,} MiB", big["pp_rss_mib"] / small["pp_rss_mib"],
                "<= 1.2", f"{big['genomes']} genomes of {args.genome_mbp:g} Mbp, keep_downloads=2"),
            row("6", f"02_train_tokenizer (char) peak RSS, {big['gbp']:g} / {small['gbp']:g} Gbp",
                f"{small['tok_rss_mib']:,} MiB", f"{big['tok_rss_mib']:,} MiB",
                big["tok_rss_mib"] / small["tok_rss_mib"], "<= 1.2"),
            row("6", f"01 throughput at {big['gbp']:g} Gbp (127.0.0.1 download + md5 + segment, whole command)",
                ours=f"{big['pp_mbp_s']:,.1f} Mbp/s", note=f"parse alone {big['pp_parse_mbp_s']:,.1f} Mbp/s"),
            row("6", f"02 char encode throughput at {big['gbp']:g} Gbp (whole command)",
                ours=f"{big['tok_mbp_s']:,.1f} Mbp/s")]
    print("\n" + format_table(rows))
    rows += [row("6", f"detail {r['gbp']:g} Gbp") | r for r in results]  # the table above, as columns
    path = write_rows("genome_list", rows, meta={"date": time.strftime("%Y-%m-%d %H:%M"), "load": load_str(),
                                                 **machine_info()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
