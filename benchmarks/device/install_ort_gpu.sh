#!/usr/bin/env bash
# On the GPU machine: collect the onnxruntime-gpu wheel carried in pieces over several `run` calls
# (benchmarks/device/README.md), join it, check it and install it into /tmp/site.
#   bash benchmarks/device/install_ort_gpu.sh stash     keep the pieces this call carried (.ortgpu/N/) in /tmp/ortgpu
#   bash benchmarks/device/install_ort_gpu.sh install   stash, then join every piece, check the sha256, install;
#                                                       afterwards: export PYTHONPATH=/tmp/site:$PWD
# /tmp/ortgpu lives as long as the machine: every call of one session's warm machine sees it.
set -euo pipefail
STORE=/tmp/ortgpu
mkdir -p "$STORE"
for file in .ortgpu/*/piece-* .ortgpu/*/SHA256SUMS; do
  [ -e "$file" ] && cp "$file" "$STORE/"
done
echo "pieces on this machine: $(ls "$STORE" | grep -c '^piece-' || true)"
[ "${1:-stash}" = "stash" ] && exit 0

[ -s "$STORE/SHA256SUMS" ] || { echo "no SHA256SUMS in $STORE: nothing was carried" >&2; exit 1; }
name=$(awk '{print $2}' "$STORE/SHA256SUMS")
cat "$STORE"/piece-* >"$STORE/$name"
(cd "$STORE" && sha256sum -c SHA256SUMS) || { echo "pieces missing or damaged: carry every .ortgpu/N" >&2; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$STORE/$name"
PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, 'from', o.__file__, o.get_available_providers())"
