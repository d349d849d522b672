# Sourced by tools/bootstrap.sh and tools/test-lowest.sh: pip_ VENV ARGS... = "VENV/bin/pip install ARGS"
# showing pip's own lines (Collecting / Downloading / Installing: the progress of a long first
# install) without the "Requirement already satisfied" ones that make up every later run. A bash
# loop, not sed or grep (the install tests run bootstrap on a PATH of stubs); it never fails, so a
# pipeline's status is pip's under pipefail.
pip_progress() {
  local venv=$1
  shift
  "$venv/bin/pip" install --disable-pip-version-check "$@" 2>&1 |
    while IFS= read -r line; do
      [[ $line == "Requirement already satisfied"* ]] || printf '%s\n' "$line"
    done
}
