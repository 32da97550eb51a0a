# Shared by the CI scripts: a pinned Python virtualenv, installed once and reused while its
# requirements file is unchanged.
#
#   source .ci/lib/venv.sh
#   install_venv VENV REQUIREMENTS      # uses the caller's log and die functions

venv_sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

install_venv() {
  local venv=$1 requirements=$2 stamp="$1/.installed" want
  want=$(venv_sha "$requirements")
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "python deps: up to date"; return
  fi
  command -v python3 >/dev/null || die "python3 not found"
  python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "python3 >= 3.10 needed (found $(python3 --version))"
  log "python deps: installing into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements"
  "$venv/bin/pip" check >/dev/null
  echo "$want" > "$stamp"
}
