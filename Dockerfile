# Grand-Challenge algorithm image for OCELOT 2023 cell detection.
# Base: the official PyTorch *runtime* image, pinned by tag and digest. CUDA 12.8 runs on NVIDIA drivers >= 525 (CUDA 12
# minor-version compatibility) and supports the T4 (sm_75); CUDA 13 images would need driver >= 580, which GC's T4
# hosts are not known to have. Override with --build-arg BASE_IMAGE=... (build.sh --base / --local-base).
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime@sha256:7b324d212a4450795b49edba9949b7cdc72429148a64e974334bfe5774d51385
FROM --platform=linux/amd64 ${BASE_IMAGE}

# No network at run time: every cache points into the image or is switched to offline mode.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TORCH_HOME=/opt/app/.torch

# GC refuses images whose USER is root, and the user must exist in /etc/passwd.
RUN useradd --create-home --uid 1001 --user-group user

WORKDIR /opt/app

# requirements.txt pins everything except torch, whose range the base image already satisfies. torch is held to the
# base image's build (a constraint on its public version), so pip picks the torchvision smp needs for that
# torch instead of replacing it.
COPY requirements.txt /opt/app/
RUN python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > /tmp/keep-torch.txt \
 && python -m pip install --no-cache-dir -c /tmp/keep-torch.txt -r requirements.txt \
 && rm /tmp/keep-torch.txt \
 && python -c "import sys, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
sys.exit(None if (torch.version.cuda or '').startswith('12.') else 'the base image must bring a CUDA 12 build of torch (see above)')"

# Weights change less often than code, so they get the earlier layer.
COPY weights/ /opt/app/weights/
COPY ocelot_algo/ /opt/app/ocelot_algo/
COPY process.py /opt/app/

USER user

# Reads /input and writes /output/cell_classification.json (process.py's defaults).
ENTRYPOINT ["python", "/opt/app/process.py"]
