//! Cockpit's administrative access for single sign-on users, end to end with the real
//! cockpit-ws 287, its PAM stack, sudo and the superuser bridge Cockpit starts through it:
//! alice (group `admins`, the route's `admin_groups`) turns on administrative access with no
//! password and a `"superuser": "require"` channel runs as root, while her own bridge stays
//! alice's; bob (no groups, mapped to a local account that has a password but is not in the
//! sudo group) cannot; and alice's grant does not work for sudo outside her Cockpit session.
//!
//! Tier `cockpit`, plus sudo. It writes a PAM block into `/etc/pam.d/cockpit`, a sudoers
//! drop-in and a PAM service, all named after the test and removed afterwards, also when it
//! fails (testkit's `AdminAccess`, `PamBlock`).

use std::process::Command;

use testkit::cockpit::{AdminAccess, OneCockpit, PasswordUser, open_socket_as_superuser};
use testkit::{Front, run};

#[tokio::test]
#[ignore = "tier cockpit: needs root, cockpit-ws/-bridge/-system, sudo, the account alice, Envoy and the dev IdP; run scripts/test as root"]
async fn admin_group_members_get_administrative_access_and_no_one_else() {
    testkit::tier::require_sudo();
    let one = OneCockpit::start(
        Front::Envoy,
        "cockpit: { accounts: { alice@example.com: alice, bob@example.com: portcullis-probe }, admin_groups: [admins] }",
        true,
    )
    .await;
    // bob's account has a password of its own (random, locked again afterwards): it is not
    // in the sudo group, so it would not get administrative access with it either.
    let _bob_account = PasswordUser::create(&one.lock);
    let _admin = AdminAccess::install(&one.lock, "e2e", &one.bin, &one.admin_grants())
        .unwrap_or_else(|e| panic!("install administrative access: {e:#}"));
    let origin = one.stack.origin("cockpit");

    // alice: Start("sudo") succeeds without a prompt, and the channel runs as root; her own
    // bridge is still alice's (Cockpit's privilege separation).
    let cookies = one.log_in("alice").await;
    let report = open_socket_as_superuser(&one.socket_url(), &cookies, &origin, "sudo");
    eprintln!("alice: {report}");
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(report["whoami"], "alice", "{report}");
    let su = &report["superuser"];
    assert_eq!(
        su["start"]["ok"],
        true,
        "{report}\n{}",
        one.cockpit.log_tail()
    );
    assert!(
        su.get("prompt").is_none(),
        "sudo asked alice for a password: {report}"
    );
    assert_eq!(su["uid"], "0", "{report}");
    let grants: Vec<_> = std::fs::read_dir(one.admin_grants())
        .expect("pam-verify made the grants directory")
        .flatten()
        .collect();
    assert_eq!(grants.len(), 1, "one grant, for alice's Cockpit session");

    // Outside her Cockpit session, alice's grant is nothing: sudo from another process of
    // hers asks as before (she is not in the sudo group), and no privileged bridge starts.
    let out = run(Command::new("runuser").args([
        "-u",
        "alice",
        "--",
        "sudo",
        "-k",
        "-n",
        "/usr/bin/cockpit-bridge",
        "--privileged",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stdout.contains("init") && stderr.contains("sudo"),
        "sudo outside the Cockpit session: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );

    // bob: signed in to Cockpit as his account, but Start fails and nothing runs as root.
    let cookies = one.log_in("bob").await;
    let report = open_socket_as_superuser(&one.socket_url(), &cookies, &origin, "sudo");
    eprintln!("bob: {report}");
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(report["whoami"], "portcullis-probe", "{report}");
    let su = &report["superuser"];
    assert!(
        su["start"]["ok"].is_null(),
        "bob's Start succeeded: {report}"
    );
    assert_ne!(su["uid"], "0", "{report}");
    assert!(
        su["close"]["problem"].is_string(),
        "the privileged channel is refused: {report}"
    );
}
