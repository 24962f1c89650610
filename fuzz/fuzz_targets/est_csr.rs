//! Fuzz target: the body of an EST simpleenroll/simplereenroll request,
//! along the path enroll/mod.rs gives it: base64 (or PEM) to PEM, the CA's
//! request check (parse, signature, key kind), and signing when it passes;
//! then the EST answer readers a device uses (hearth_protocol::pki).
#![no_main]

use std::sync::OnceLock;

use hearth_daemon::ca::{pem_to_der, HubCa};
use hearth_daemon::enroll::csr_pem_from_body;
use hearth_protocol::pki::{self, device_id_of};
use hearth_protocol::DeviceId;
use libfuzzer_sys::fuzz_target;

/// One hub CA for the whole run, in a private temporary directory.
fn ca() -> &'static HubCa {
    static CA: OnceLock<HubCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hearth-fuzz-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        HubCa::load_or_create(&dir).expect("a hub CA")
    })
}

fuzz_target!(|data: &[u8]| {
    let ca = ca();
    // The answer's reader sees untrusted bytes too (a device talking to a
    // hub it is pairing with).
    for certs in [pki::certificates(data), pki::est_certificates(data)]
        .into_iter()
        .flatten()
    {
        for cert in &certs {
            let _ = device_id_of(cert);
        }
    }
    let Ok(pem) = csr_pem_from_body(data) else {
        return;
    };
    if ca.check_request(&pem).is_err() {
        return;
    }
    let device = DeviceId::from_entropy([9; 16]);
    let issued = ca
        .issue_device(&pem, &device)
        .expect("a request that passed the check is signed");
    let der = pem_to_der(&issued.pem).expect("the issued certificate is PEM");
    assert_eq!(device_id_of(&der), Some(device), "it names the device");
    let p7 = pki::certs_only(&[&der]);
    assert_eq!(pki::certificates(&p7), Some(vec![der.to_vec()]));
});
