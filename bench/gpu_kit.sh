#!/usr/bin/env bash
# The GPU proof kit: prepares what a GPU machine without network needs to run
# bench/gpu_train_step.py, checks it fits the 64 MiB a device call carries, and prints the command.
#
#   bash bench/gpu_kit.sh          # here, in the repository root, with `make install` done
#
# The device (see /work/.library/device and docs/training.md "GPU numbers") has Python 3.12 with
# torch, transformers, peft and accelerate, but no rayft, DeepSpeed, pydantic (rayft's config),
# hjson (DeepSpeed's) or bitsandbytes (QLoRA). They travel as wheels in .whl/ (git-ignored through
# .git/info/exclude), pinned to the versions of the CPU lock file:
#   - rayft itself, built from this checkout (so the bench imports rayft.training, not a copy);
#   - DeepSpeed, pure Python, built from its sdist (its ops compile just in time, none are needed);
#   - pydantic with its compiled core for CPython 3.12, and the three small packages it needs
#     (typing-extensions too: the one there may predate what pydantic_core imports);
#   - hjson, and bitsandbytes (one manylinux wheel holding its CUDA 11.8-13.2 libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LIMIT=$((64 * 1024 * 1024))
DEVICE_PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
                  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

LOG=${TMPDIR:-/tmp}/rayft-gpu-kit.log

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
echo "building and fetching wheels (pip's output: $LOG)"
"$PY" -m pip wheel --quiet --no-deps -w .whl . deepspeed==0.19.8 > "$LOG" 2>&1
"$PY" -m pip download --quiet --no-deps --only-binary=:all: "${DEVICE_PLATFORMS[@]}" -d .whl \
    pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 hjson==3.1.0 bitsandbytes==0.50.2 >> "$LOG" 2>&1

# What travels: the working tree git would send (tracked and untracked-not-ignored files) plus .whl.
tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
total=$((tree + wheels))
ls -1 .whl
printf 'carry: working tree %.1f MiB + wheels %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
    "$(echo "$tree / 1048576" | bc -l)" "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -ge "$LIMIT" ]; then
    echo "error: the kit is over the 64 MiB a device call carries" >&2
    exit 1
fi

# The one command to run there (device tool: carry [".whl"], timeout_s 480). The bench itself stops
# at 420 s, which leaves time in a 15-minute budget for a machine start and one rerun.
cat <<'COMMAND'
device command (carry .whl, timeout_s 480):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.csv; timeout 420 python3 bench/gpu_train_step.py --size 1b --device cuda --out $OUT/gpu_train_step.json
COMMAND
