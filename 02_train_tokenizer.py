"""02_train_tokenizer: not built yet (see the open issue for this step)."""
import sys

if __name__ == "__main__":
    print("02_train_tokenizer.py: not built yet", file=sys.stderr)
    sys.exit(2)
