#!/usr/bin/env bash
# Stop the demo cluster that scripts/demo.sh left running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cluster_stop demo
note "demo cluster stopped"
