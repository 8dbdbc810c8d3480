#!/usr/bin/env bash
# The seed's health.sh: one PASS/FAIL line; exit 0 when this node provides
# the service, 1 when it does not, 3 when escd does not answer.
# ESC_HOME selects the node (default /opt/esc); extra arguments go to escadm.
exec "${ESCADM:-escadm}" health "$@"
