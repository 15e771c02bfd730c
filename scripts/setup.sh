#!/usr/bin/env bash
# Idempotent set-up for `make book` and `make test`: the Debian packages the data, the book test and
# `avgn localize --video` need, the Python virtual environment (.venv) with the pinned package, and
# the npm packages of the emoji assets and the book's site template. Each step is skipped when done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT_PACKAGES=(
  chromium                          # headless browser: the book's reader test
  chromium-driver                   # its WebDriver (selenium)
  fluidsynth                        # soundfont renderer (instrument audio)
  fluid-soundfont-gm                # FluidR3_GM.sf2
  timgm6mb-soundfont                # TimGM6mb.sf2
  musescore-general-soundfont-small # MuseScore_General_Lite.sf3
  gcompris-qt-data                  # real instrument/animal recordings, drawings and photos
  tuxpaint-stamps-default           # cut-out photos with alpha masks, sound effects
  fonts-noto-color-emoji            # emoji drawings
  openclipart-svg                   # clip-art drawings
  ffmpeg                            # `avgn localize --video`: a video's frame and audio (ffmpeg, ffprobe)
)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# ---- Debian packages -------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Node >= 18 with npm for mystmd and the site template: any installation will do (Debian's or NodeSource's)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  log "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt: all ${#APT_PACKAGES[@]} packages present"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
  echo "Node $(node --version) is too old: mystmd needs Node >= 18 (e.g. from NodeSource)" >&2
  exit 1
fi

# ---- Python ------------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.avgn-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pip: installing avgn[dev] (pinned torch, torchvision, torchaudio; the segment extra: OpenCV, segment-anything; the audioclip extra: open_clip_torch)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  # tinysoundfont declares pyaudio (which does not build and is not used) as a hard dependency
  .venv/bin/python -m pip install -q --no-deps tinysoundfont==0.3.7
  echo "$want" > "$stamp"
else
  log "pip: .venv up to date"
fi

# ---- npm ---------------------------------------------------------------------------------------
for dir in assets theme; do
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules" ]; then
    log "npm: installing $dir/ from its lockfile"
    npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error
  fi
done
log "done"
