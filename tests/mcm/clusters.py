"""Cluster fixtures for the control plane's core tests (no I/O)."""

from __future__ import annotations

from services.mcm.core.inventory import Cluster, ClusterName


def cluster(cloud: str, region: str, zone: str, price: float, gpus: int = 8,
            accelerator: str = "H100", up: bool = True) -> Cluster:
    name = ClusterName(f"{cloud}/{region}/{zone}/{accelerator.lower() or 'cpu'}")
    return Cluster(name, cloud, region, zone, accelerator, gpus, price, up)


# Two clouds: aws is cheaper in us-east-1, gcp in europe-west4; each has two zones in a region.
AWS_E1A = cluster("aws", "us-east-1", "us-east-1a", 3.0)
AWS_E1B = cluster("aws", "us-east-1", "us-east-1b", 3.0)
AWS_W2A = cluster("aws", "us-west-2", "us-west-2a", 3.5)
GCP_EU4A = cluster("gcp", "europe-west4", "europe-west4-a", 3.2)
GCP_C1A = cluster("gcp", "us-central1", "us-central1-a", 3.4)
WORLD = [AWS_E1A, AWS_E1B, AWS_W2A, GCP_EU4A, GCP_C1A]
