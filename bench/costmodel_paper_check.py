"""The roofline cost model against the paper's reported configurations (Markdown table).

.venv/bin/python bench/costmodel_paper_check.py [--gpu A100-80GB]
"""

from __future__ import annotations

import argparse

from moe_spec.costmodel import GPUS
from moe_spec.costmodel.paper import format_paper_check

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="A100-80GB", choices=list(GPUS))
    print(format_paper_check(parser.parse_args().gpu))
