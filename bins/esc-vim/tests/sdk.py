"""Drives esc-vim with openstacksdk, a real OpenStack client: authenticate,
look up image, flavor and network by name, create a server with metadata
and a fixed address, list, show, wait for ACTIVE, reboot, stop, start,
delete. Prints one line per step; exits non-zero on the first failure."""
import sys
import openstack

base, password = sys.argv[1], sys.argv[2]
conn = openstack.connect(
    auth_url=f"{base}/identity/v3",
    username="admin",
    password=password,
    project_name="vnf",
    user_domain_name="Default",
    project_domain_name="Default",
    region_name="RegionOne",
    identity_api_version="3",
)
image = conn.image.find_image("vnf-image")
flavor = conn.compute.find_flavor("m1.small")
net = conn.network.find_network("vnf-net")
assert image and flavor and net, (image, flavor, net)
print("found", image.id, flavor.id, net.id)
server = conn.compute.create_server(
    name="esc-dep1-g1-0",
    image_id=image.id,
    flavor_id=flavor.id,
    networks=[{"uuid": net.id, "fixed_ip": "203.0.113.42"}],
    metadata={"esc_deployment": "dep1", "esc_group": "g1", "esc_index": "0"},
)
server = conn.compute.wait_for_server(server, status="ACTIVE", wait=30, interval=0.2)
print("active", server.id, server.addresses)
assert server.addresses["vnf-net"][0]["addr"] == "203.0.113.42"
names = [s.name for s in conn.compute.servers()]
assert names == ["esc-dep1-g1-0"], names
# A page of one is full: the SDK follows the next link to an empty page.
paged = [s.name for s in conn.compute.servers(limit=1)]
assert paged == ["esc-dep1-g1-0"], paged
assert conn.compute.get_server(server.id).metadata["esc_group"] == "g1"
def act_then_wait(action, status):
    # The object passed to wait_for_server is checked before it is
    # refreshed: fetch the server's state after the action first.
    action()
    fresh = conn.compute.get_server(server.id)
    return conn.compute.wait_for_server(fresh, status=status, wait=30, interval=0.2)

rebooting = (conn.compute.reboot_server(server, "SOFT"), conn.compute.get_server(server.id))[1]
assert rebooting.status == "REBOOT", rebooting.status
conn.compute.wait_for_server(rebooting, status="ACTIVE", wait=30, interval=0.2)
print("rebooted")
act_then_wait(lambda: conn.compute.stop_server(server), "SHUTOFF")
act_then_wait(lambda: conn.compute.start_server(server), "ACTIVE")
print("stopped and started")
conn.compute.delete_server(server)
conn.compute.wait_for_delete(server, wait=30, interval=0.2)
assert list(conn.compute.servers()) == []
print("deleted")
