#!/usr/bin/env bash
# Encode the bundled picture into 3 layers and decode it at every layer; then encode the
# bundled clip (24 frames of OpenCV's tree.avi at 160x120) as a layered I/P video and
# decode it with 1 layer and with all layers.
set -euo pipefail
cd "$(dirname "$0")/.."
GSVC=.venv/bin/gsvc
mkdir -p out
$GSVC encode examples/kodim03_384x256.png -o out/kodim03.gsv --preset fast --seed 0 -y
for k in 1 2 3; do
  $GSVC decode out/kodim03.gsv --layers "$k" -o "out/kodim03_layers$k.png" -y
done
$GSVC decode out/kodim03.gsv --scale 2 -o out/kodim03_x2.png -y
$GSVC info out/kodim03.gsv
echo "decoded: out/kodim03_layers{1,2,3}.png (and a 2x render: out/kodim03_x2.png)"
echo
$GSVC encode examples/tree_160x120.mp4 -o out/tree.gsv --preset fast --seed 0 -y
$GSVC decode out/tree.gsv --layers 1 -o out/tree_layer1.mp4 -y
$GSVC decode out/tree.gsv -o out/tree.mkv -y
$GSVC eval out/tree.gsv --reference examples/tree_160x120.mp4
echo "decoded: out/tree_layer1.mp4 (base layer, H.264) and out/tree.mkv (all layers, lossless FFV1)"
