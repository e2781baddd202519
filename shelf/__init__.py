"""
The shelf: machinery the numbered scripts use and a reader may skip. Each file has one job.

    errors.py        UserError and run_main: one line on stderr, a non-zero exit, no traceback
    config.py        the config sections, --config FILE + --section.key=value, the resolved config.toml
    files.py         atomic writes, file hashes, resumable verified downloads
    fasta.py         the one FASTA reader (streaming, plain or gzip)
    genomes.py       01's genome list: sources or a manifest (TSV, NT's urls.csv), downloads checked,
                     the ledger that resumes a many-genome run, the --dry-run plan
    tokens.py        loading tokenizer.json and tokens/meta.json, special-token ids by role
    distributed.py   torchrun set-up, DDP / FSDP2 wrapping, activation checkpointing, compile
    checkpoint.py    pretraining checkpoints: atomic, resumable (bit-exactly on CPU), FSDP-aware
    train_log.py     03's progress: the bar, the log lines, pretrain_log.csv, tokens/s and MFU
    dry_run.py       03's --dry-run: memory per GPU and run time from the config alone
    plots.py         every PNG the pipeline draws
    results.py       04's results.csv / results.md, beside the published figures
    demo_data.py     the synthetic demo genome (01) and demo tasks (04)
    hf_keys.py       Hugging Face RoBERTa / ESM (NT, AgroNT) <-> model.py: weight names, config, vocab.txt
    nt_tasks.py      04's task files: the NT benchmark's pinned repos and counts, download, checked reading
    runs.py          04's runs: tasks and inits ready, run hashing, finished runs skipped, ranks' shares
    seeds.py         the one seeding rule: every random draw from run.seed and a named stream
    hf_hub.py        04's hf: inits: a pinned hub checkpoint fetched (sha256-checked) and loaded into our classes
    inference.py     a trained run loaded, sequences into embeddings (05, README)
"""
