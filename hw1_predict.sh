#!/usr/bin/env bash
# What hw1_1.sh and hw1_2.sh run:  bash hw1_predict.sh cls|seg <image_dir> <output>
# python -m hw1.predict with the repository's venv if it has one (else the machine's python3) and
# the task's checkpoint: $HW1_P1_CHECKPOINT / $HW1_P2_CHECKPOINT if set; else checkpoints/p1.pth /
# checkpoints/p2.pth (what hw1_download.sh fetches); without one, the shipped model A,
# checkpoints/p1_densenet.pth / checkpoints/p2_vgg16_fcn8s.pth.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
task="${1:-}"
case "$task" in
    cls) script=hw1_1.sh output=output_csv variable=HW1_P1_CHECKPOINT
         checkpoint="${HW1_P1_CHECKPOINT:-$here/checkpoints/p1.pth}"
         if [ -z "${HW1_P1_CHECKPOINT:-}" ] && [ ! -f "$checkpoint" ]; then
             checkpoint="$here/checkpoints/p1_densenet.pth"
         fi ;;
    seg) script=hw1_2.sh output=output_dir variable=HW1_P2_CHECKPOINT
         checkpoint="${HW1_P2_CHECKPOINT:-$here/checkpoints/p2.pth}"
         if [ -z "${HW1_P2_CHECKPOINT:-}" ] && [ ! -f "$checkpoint" ]; then
             checkpoint="$here/checkpoints/p2_vgg16_fcn8s.pth"
         fi ;;
    *) echo "usage: bash hw1_predict.sh cls|seg <image_dir> <output>" >&2; exit 2 ;;
esac
if [ "$#" -ne 3 ]; then
    echo "usage: bash $script <image_dir> <$output>" >&2
    exit 2
fi
# an empty argument would mean the current folder to Python
if [ -z "$2" ] || [ -z "$3" ]; then
    echo "error: $script: empty $([ -z "$2" ] && echo "<image_dir>" || echo "<$output>") argument" >&2
    exit 2
fi
if [ ! -f "$checkpoint" ]; then
    echo "error: $checkpoint: checkpoint not found; run 'bash hw1_download.sh' first or set $variable" >&2
    exit 2
fi
python="$here/.venv/bin/python"
[ -x "$python" ] || python=python3
# without the packages, a one-line hint rather than Python's ModuleNotFoundError traceback
if ! "$python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('torch', 'torchvision', 'PIL', 'numpy')))" 2>/dev/null; then
    echo "error: $python lacks torch, torchvision, pillow or numpy; set up with 'python3 -m venv $here/.venv && $here/.venv/bin/pip install -r $here/requirements.txt'" >&2
    exit 2
fi
echo "$script: checkpoint $checkpoint" >&2
# "--": a path that starts with "-" is a path, not a flag
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m hw1.predict "$task" --checkpoint "$checkpoint" -- "$2" "$3"
