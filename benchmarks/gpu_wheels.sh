#!/usr/bin/env bash
# Wheels the benchmarks need on a GPU machine that has PyTorch, transformers, accelerate and peft but no network
# (this workplace's H100/H200 image: Python 3.12, torch 2.11, transformers 5.17). Run here, from the repository
# root (.whl/ is git-ignored); the device call carries .whl/ and installs it (see benchmarks/README.md,
# "to run on an H100/H200").
#   .whl/         ours and TRL 1.16: datasets, pydantic, trl 1.16.0
#   .whl/trl011/  TRL 0.11.4 with its own transformers 4.46.3, installed into a separate --target directory
set -euo pipefail
download() {  # download DIR PACKAGE==VERSION ...
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$dir" "$@"
}
download .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 trl==1.16.0
download .whl/trl011 trl==0.11.4 transformers==4.46.3 tokenizers==0.20.3 accelerate==1.1.1 datasets==3.1.0 \
  dill==0.3.8 multiprocess==0.70.16 huggingface-hub==0.36.2 fsspec==2024.9.0 tyro==0.9.35 docstring-parser==0.18.0 \
  shtab==1.7.2 typeguard==4.4.4
du -sh .whl
