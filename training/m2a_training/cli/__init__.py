"""Entry points of m2a_training (argparse and `main` only; the logic lives in the library)."""
