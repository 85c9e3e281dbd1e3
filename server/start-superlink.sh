#!/usr/bin/env bash
# Start a Flower SuperLink (flwr 1.42) with TLS and SuperNode authentication.
#   usage: start-superlink.sh CERT_DIR STATE_DIR [HOST] [PORT]
# CERT_DIR is what `fedadapt certs` wrote. Fleet, Control and Runtime APIs share one HTTPS
# port, and Flower authenticates no Control API caller: server/superlink_guard.py runs
# flower-superlink with the Control and Runtime APIs answering only the operator's addresses
# (loopback and $FEDADAPT_OPERATOR_ADDRESSES); devices reach the Fleet API only.
# Nothing is installed at run time; telemetry and update checks are off.
set -euo pipefail
certs=$1 state=$2 host=${3:-127.0.0.1} port=${4:-9093}
mkdir -p "$state"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# the python of the venv whose flower-superlink is on PATH, so fedadapt imports
exec "$(dirname "$(command -v flower-superlink)")/python" -m fedadapt.server.superlink_guard \
  --ssl-ca-certfile "$certs/ca.crt" \
  --ssl-certfile "$certs/superlink.crt" \
  --ssl-keyfile "$certs/superlink.key" \
  --enable-supernode-auth \
  --isolation subprocess \
  --disable-runtime-dependency-installation \
  --host "$host" --port "$port" \
  --database "$state/superlink.db"
