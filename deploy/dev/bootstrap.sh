#!/usr/bin/env bash
# Prepares a fresh Debian machine for `make demo` / `make test`: the Debian packages the
# local stack runs (Mosquitto, InfluxDB 1.x, NATS for the scale-out cluster, SoftHSM for
# the PKCS#11 signing path) and a project virtualenv. Safe to run again: it installs only
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python3}
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)   # ingest-health dashboard queries
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)  # `stack up --broker nats`
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then need+=(python3-venv); fi
# Evidence reports: CJK fonts for Chinese text, Pango for WeasyPrint, pdftoppm/pdftotext.
fc-list 2>/dev/null | grep -qiE 'WenQuanYi|Noto Sans CJK' || need+=(fonts-wqy-microhei)
command -v fc-list >/dev/null 2>&1 || need+=(fontconfig)
ldconfig -p 2>/dev/null | grep -q libpangoft2-1.0 || need+=(libpango-1.0-0 libpangoft2-1.0-0)
ldconfig -p 2>/dev/null | grep -q libharfbuzz-subset || need+=(libharfbuzz-subset0)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "bootstrap: installing Debian packages: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.stationseal-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev,evidence]'
  # Optional dashboards uploader; keep urllib3-future from replacing urllib3 (see pyproject).
  URLLIB3_NO_OVERRIDE=1 .venv/bin/python -m pip install -q --no-binary urllib3-future \
    'grafana-client>=4'
  touch "$stamp"
fi
