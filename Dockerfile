# one image holding every service binary (commerce-order, commerce-inventory,
# commerce-settlement, commerce-commission): the services share all their libraries
# (gRPC core, libpq, librdkafka, libuv, common/), so one image is one build,
# one vulnerability scan and one tag per release, and every service of a
# release runs the same common/ code; the binaries add ~0.5 MB each, whereas
# an image per service would repeat the same ~33 MB of libraries in each.
# the chart picks the binary with `command`.
#
#   docker build -t commerce:dev .                  (debian:12 from a registry)
#   docker build --build-arg BASE=localhost/debian:12 ...  (scripts/image.sh)
#
# stages: build (debian 12 with the -dev packages) -> rootfs (the binaries,
# exactly the shared libraries they load, CA certificates, a passwd entry
# and the dpkg records of the packages those files come from) -> a runtime
# made of that tree only: no shell, no package manager; every file in it
# comes from Debian 12 packages or from this build.
ARG BASE=debian:12

FROM ${BASE} AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      build-essential cmake pkg-config ninja-build \
      libgrpc-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev \
      libprotobuf-c-dev protobuf-c-compiler libpq-dev librdkafka-dev \
      libuv1-dev check libsubunit-dev libjwt-dev libjansson-dev \
      libhttp-parser-dev libssl-dev libcurl4-openssl-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# only the service binaries: the tests' executables are not shipped
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
 && ninja -C /build commerce-order commerce-inventory commerce-settlement commerce-commission \
 && install -d /rootfs/usr/local/bin \
 && install -m 0755 -s /build/bin/commerce-order /build/bin/commerce-inventory \
      /build/bin/commerce-settlement /build/bin/commerce-commission /rootfs/usr/local/bin/ \
 && docker/collect-rootfs.sh /rootfs /rootfs/usr/local/bin/commerce-*

FROM scratch AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/commerce/commerce
ARG BASE
LABEL org.opencontainers.image.title="commerce" \
      org.opencontainers.image.description="commerce services: commerce-order, commerce-inventory, commerce-settlement, commerce-commission" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE}" \
      org.opencontainers.image.licenses="proprietary"
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# the numeric uid, so runAsNonRoot can verify it without reading /etc/passwd
USER 65532:65532
WORKDIR /
EXPOSE 50051 50052 50053 50054 9091 9092 9093 9094
# no ENTRYPOINT: the binary is the command (docker run IMAGE commerce-inventory)
CMD ["commerce-order", "--help"]
