# A single-node OpenStack Swift with its s3api middleware, for the archive's S3 tests
# (test/support/swift-s3.ts drives it). Everything lives under one directory; every port is on
# 127.0.0.1. Debian's python3-swift; run with /usr/bin/python3.
#
#   swift_s3.py init DIR PROXY ACCOUNT CONTAINER OBJECT MEMCACHED   configs and rings
#   swift_s3.py run DIR proxy|account|container|object                one server, foreground
#   swift_s3.py exec PROGRAM ARGS...                                   e.g. memcached
#
# `run` and `exec` ask the kernel to kill the process when its parent dies (PR_SET_PDEATHSIG),
# so a test runner killed with SIGKILL leaves no server behind.
import ctypes
import os
import pwd
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl
        sys.exit(1)


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)


def common(dir_, port, user):
    return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {dir_}
devices = {dir_}/srv
mount_check = false
log_level = WARNING
log_udp_host = 127.0.0.1
log_udp_port = 9
"""


def init(dir_, proxy, account, container, object_, memcached):
    from swift.common.ring import RingBuilder

    user = pwd.getpwuid(os.getuid()).pw_name
    os.makedirs(f'{dir_}/srv/d1', exist_ok=True)
    write(f'{dir_}/swift.conf', """[swift-hash]
swift_hash_path_suffix = rewind-test
swift_hash_path_prefix = rewind-test

[storage-policy:0]
name = only
default = yes
""")
    write(f'{dir_}/proxy-server.conf', common(dir_, proxy, user) + f"""
[pipeline:main]
pipeline = catch_errors healthcheck proxy-logging cache s3api tempauth slo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:slo]
use = egg:swift#slo

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
""")
    for kind, port in (('account', account), ('container', container), ('object', object_)):
        write(f'{dir_}/{kind}-server.conf', common(dir_, port, user) + f"""
[pipeline:main]
pipeline = healthcheck {kind}-server

[filter:healthcheck]
use = egg:swift#healthcheck

[app:{kind}-server]
use = egg:swift#{kind}
""")
        # 2^8 partitions, 1 replica, 1 device: built here in one process (swift-ring-builder
        # calls take seconds each).
        builder = RingBuilder(8, 1, 1)
        builder.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': port,
                         'device': 'd1', 'weight': 100, 'meta': ''})
        builder.rebalance()
        builder.get_ring().save(f'{dir_}/{kind}.ring.gz')


def run(dir_, server):
    die_with_parent()
    from swift.common.utils import set_swift_dir
    from swift.common.wsgi import run_wsgi

    # Swift reads /etc/swift/swift.conf at import unless told otherwise.
    set_swift_dir(dir_)
    sys.exit(run_wsgi(f'{dir_}/{server}-server.conf', f'{server}-server', verbose=True))


def main(argv):
    if len(argv) == 8 and argv[1] == 'init':
        init(argv[2], *(int(p) for p in argv[3:8]))
    elif len(argv) == 4 and argv[1] == 'run':
        run(argv[2], argv[3])
    elif len(argv) >= 3 and argv[1] == 'exec':
        die_with_parent()
        os.execvp(argv[2], argv[2:])
    else:
        sys.exit(f'usage: {argv[0]} init DIR PORTS... | run DIR SERVER | exec PROGRAM ARGS...')


if __name__ == '__main__':
    main(sys.argv)
