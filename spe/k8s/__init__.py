"""SPE on Kubernetes: project provisioning (volumes, policies), pod-bound workspace tokens and
the `spe k8s` commands. Objects are built in spe.workspaces.kube_objects."""

from spe.errors import SPEError


class KubernetesError(SPEError):
    """A Kubernetes step failed or is refused; the message says what to fix."""

    exit_code = 11
