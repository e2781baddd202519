"""04_finetune_nt: not built yet (see the open issue for this step)."""
import sys

if __name__ == "__main__":
    print("04_finetune_nt.py: not built yet", file=sys.stderr)
    sys.exit(2)
