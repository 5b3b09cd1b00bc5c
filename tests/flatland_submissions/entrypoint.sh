# The entrypoint of flatland-baselines' images (minus conda): the working directory on the path, then
# the container's arguments.
set -eu
export PYTHONPATH=$PWD
$@
