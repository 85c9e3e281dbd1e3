#!/usr/bin/env bash
# Start a Flower SuperNode (flwr 1.42) that trusts the CA and authenticates with its key.
#   usage: start-supernode.sh SUPERLINK CA_CERT NODE_KEY PARTITION_ID NUM_PARTITIONS DEVICE_DIR [PORT [DATA_DIR]]
# SUPERLINK is host:port. The node's public key (NODE_KEY.pub) must have been registered
# with `flwr supernode register NODE_KEY.pub CONNECTION` before it connects. Each SuperNode
# on one machine needs its own PORT. DEVICE_DIR keeps the personal adapter across restarts.
# DATA_DIR (absolute, or relative to DEVICE_DIR) holds the device's own JSONL/CSV examples;
# without it the node trains on demo partition PARTITION_ID of the run's data set.
set -euo pipefail
superlink=$1 ca=$2 key=$3 partition=$4 partitions=$5 device=$6 port=${7:-9094} data=${8:-}
node_config="partition-id=$partition num-partitions=$partitions device-dir=\"$device\""
if [[ -n "$data" ]]; then node_config+=" data-dir=\"$data\""; fi
mkdir -p "$device"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
exec flower-supernode \
  --root-certificates "$ca" \
  --superlink "$superlink" \
  --auth-supernode-private-key "$key" \
  --node-config "$node_config" \
  --port "$port"
