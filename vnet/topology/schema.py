"""Prints the topology file's JSON Schema: the published ``topology.schema.json``.

The schema is derived from the field table in ``fields.py``; regenerate the checked-in copy
after changing that table::

    python -m vnet.topology.schema > vnet/topology/topology.schema.json

(``vnet/topology/__init__`` does not import this module, so ``-m`` runs it cleanly.)
"""

from __future__ import annotations

import json
import sys

from vnet.topology.fields import json_schema

__all__ = ["json_schema", "main"]


def main() -> None:
    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
