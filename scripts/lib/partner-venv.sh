# shellcheck shell=bash
# where the partner receivers' virtualenv lives (sourced by
# scripts/install-deps.sh, which builds it, and scripts/partner-python,
# which runs it). it is built from Debian's /usr/bin/python3 (not a pyenv
# python3 that may come first on PATH) and installs
# kafka/partner/receivers/requirements.txt from PyPI. it sits outside the
# checkout, in the cache the other scripts use, named after the
# requirements' hash: checkouts with the same requirements share one venv,
# a changed requirements.txt gets a new one, and a clean clone running
# install-deps.sh gets it like any other dependency.
#
# needs: $root (the checkout). sets: partner_requirements, partner_venv,
# partner_python. COMMERCE_PARTNER_VENV overrides the venv's path.
partner_requirements=$root/kafka/partner/receivers/requirements.txt
partner_base_python=/usr/bin/python3
partner_venv_default() {
  local cache=${COMMERCE_CACHE:-$HOME/.cache/commerce} sum
  sum=$(sha256sum "$partner_requirements" | cut -c1-12)
  printf '%s/partner-venv-%s\n' "$cache" "$sum"
}
partner_venv=${COMMERCE_PARTNER_VENV:-$(partner_venv_default)}
partner_python=$partner_venv/bin/python
# written last by install-deps.sh: the venv is complete
partner_stamp=$partner_venv/.commerce-complete
