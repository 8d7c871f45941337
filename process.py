#!/usr/bin/env python
"""Grand-Challenge entrypoint of the OCELOT 2023 cell-tissue algorithm.

    python process.py [--input /input] [--output /output] [--weights DIR] [--device auto|cpu|cuda] [--tta ...]

Reads /input/images/cell_patches/, /input/images/tissue_patches/ and /input/metadata.json, writes
/output/cell_classification.json. Same as `python -m ocelot_algo predict`; see README.md.
"""
import sys

from ocelot_algo.pipeline import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="process.py"))
