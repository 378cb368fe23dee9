//! `quay-certgen`: a CA and the server and client certificates it signs, as PEM files,
//! for development and tests. The shipped `etc/certs/` came from
//! `quay-certgen --out etc/certs`; production replaces them (see README, "TLS").

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

#[derive(Parser)]
#[command(about = "Write cacert.pem, cert.pem/key.pem (server) and client-cert.pem/client-key.pem")]
struct Args {
    /// Directory to write the PEM files into (created if missing).
    #[arg(long, default_value = "etc/certs")]
    out: PathBuf,
    /// The CA's Common Name (give another to make a CA the broker does not trust).
    #[arg(long, default_value = "Quay development CA")]
    ca_cn: String,
    /// Names and addresses the server certificate is valid for.
    #[arg(long, default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    server_name: Vec<String>,
    /// The client certificate's Common Name (a device's identity).
    #[arg(long, default_value = "client")]
    client_cn: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::OrganizationName, "Quay");
    ca.distinguished_name
        .push(DnType::CommonName, args.ca_cn.as_str());
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut server = CertificateParams::new(args.server_name.clone())?;
    server
        .distinguished_name
        .push(DnType::OrganizationName, "Quay");
    server
        .distinguished_name
        .push(DnType::CommonName, args.server_name[0].as_str());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::OrganizationName, "Quay");
    client
        .distinguished_name
        .push(DnType::CommonName, args.client_cn.as_str());
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key)?;

    write(&args.out, "cacert.pem", &ca_cert.pem())?;
    write(&args.out, "cert.pem", &server_cert.pem())?;
    write(&args.out, "key.pem", &server_key.serialize_pem())?;
    write(&args.out, "client-cert.pem", &client_cert.pem())?;
    write(&args.out, "client-key.pem", &client_key.serialize_pem())?;
    println!(
        "wrote cacert.pem, cert.pem, key.pem, client-cert.pem, client-key.pem to {}",
        args.out.display()
    );
    Ok(())
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))
}
