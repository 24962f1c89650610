//! `hearth`: the administrator's command line, speaking JSON to hearthd's
//! admin socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use hearth_protocol::admin::{AdminRequest, AdminResponse, DeviceStatus};
use hearth_protocol::{Label, MemberName, Owner, Role};

/// Administer a Hearth hub: members, devices and status.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
struct Cli {
    /// The hub's admin socket.
    #[arg(long, env = "HEARTH_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Uptime, version, listeners and connected devices.
    Status,
    /// Household members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Devices and their certificates.
    #[command(subcommand)]
    Device(DeviceCommand),
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// Adds a member, known only by a nickname and a role.
    Add {
        /// The nickname ("Ada", "Mum").
        name: MemberName,
        /// parent or child.
        #[arg(long)]
        role: Role,
    },
    /// Lists the members.
    List,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Issues a device certificate and registers the device.
    Issue(IssueArgs),
    /// Lists the devices.
    List,
}

#[derive(Debug, ClapArgs)]
struct IssueArgs {
    /// The member the device belongs to.
    #[arg(long, required_unless_present = "service", conflicts_with = "service")]
    member: Option<MemberName>,
    /// A service device (a local integration) instead of a member's.
    #[arg(long)]
    service: bool,
    /// A label for people ("Ada's tablet").
    #[arg(long)]
    label: Label,
    /// Sign this PKCS#10 request (PEM); the key stays where it was made.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "out",
        conflicts_with = "out"
    )]
    csr: Option<PathBuf>,
    /// With --csr: where to write the certificate (default: the request's
    /// path with the extension .pem); the CA goes to ca.pem beside it.
    #[arg(long, value_name = "FILE", requires = "csr")]
    cert_out: Option<PathBuf>,
    /// Make a key here and write device.key (0600), device.pem and ca.pem.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("hearth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let json = cli.json;
    let ask = |request: AdminRequest| -> Result<AdminResponse> {
        let response = request_once(&socket, &request)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&response)?);
        }
        match response {
            AdminResponse::Error { message } => bail!("{message}"),
            other => Ok(other),
        }
    };
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Status => {
            if let AdminResponse::Status(status) = ask(AdminRequest::Status)? {
                if !json {
                    writeln!(out, "hearthd {} up {}s", status.version, status.uptime_secs)?;
                    for l in &status.listeners {
                        writeln!(out, "listener {:<6} {}", l.name, l.address)?;
                    }
                    writeln!(out, "connected devices: {}", status.connected.len())?;
                    for d in &status.connected {
                        writeln!(out, "  {d}")?;
                    }
                }
            }
        }
        Command::Member(MemberCommand::Add { name, role }) => {
            if let AdminResponse::Member(m) = ask(AdminRequest::MemberAdd { name, role })? {
                if !json {
                    writeln!(out, "added {} ({})", m.name, m.role)?;
                }
            }
        }
        Command::Member(MemberCommand::List) => {
            if let AdminResponse::Members { members } = ask(AdminRequest::MemberList)? {
                if !json {
                    for m in members {
                        writeln!(out, "{}\t{}", m.name, m.role)?;
                    }
                }
            }
        }
        Command::Device(DeviceCommand::List) => {
            if let AdminResponse::Devices { devices } = ask(AdminRequest::DeviceList)? {
                if !json {
                    for d in devices {
                        let status = match d.status {
                            DeviceStatus::Active => "active",
                            DeviceStatus::Revoked => "revoked",
                        };
                        writeln!(out, "{}\t{}\t{}\t{}", d.id, d.owner, status, d.label)?;
                    }
                }
            }
        }
        Command::Device(DeviceCommand::Issue(args)) => issue(args, &ask, json, &mut out)?,
    }
    Ok(())
}

fn issue(
    args: IssueArgs,
    ask: &dyn Fn(AdminRequest) -> Result<AdminResponse>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let owner = match args.member {
        Some(name) => Owner::Member(name),
        None => Owner::Service,
    };
    let (csr_pem, key) = match &args.csr {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            None,
        ),
        None => {
            // The key is made here, on the machine that will use it; only
            // the signing request goes to the hub.
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)?
                .pem()?;
            (csr, Some(key))
        }
    };
    let AdminResponse::DeviceIssued(issued) = ask(AdminRequest::DeviceIssue {
        owner,
        label: args.label,
        csr_pem,
    })?
    else {
        bail!("unexpected answer from hearthd");
    };
    let (cert_path, ca_path) = match (&args.out, &args.csr) {
        (Some(dir), _) => {
            make_private_dir(dir)?;
            let key = key.expect("a key is made when --out is given");
            write_file(
                &dir.join("device.key"),
                key.serialize_pem().as_bytes(),
                0o600,
            )?;
            (dir.join("device.pem"), dir.join("ca.pem"))
        }
        (None, Some(csr)) => {
            let cert = args
                .cert_out
                .clone()
                .unwrap_or_else(|| csr.with_extension("pem"));
            let ca = cert.with_file_name("ca.pem");
            (cert, ca)
        }
        (None, None) => bail!("give --out DIR or --csr FILE"),
    };
    let chain = format!("{}{}", issued.certificate_pem, issued.ca_pem);
    write_file(&cert_path, chain.as_bytes(), 0o644)?;
    write_file(&ca_path, issued.ca_pem.as_bytes(), 0o644)?;
    if !json {
        writeln!(out, "{}", issued.device_id)?;
        eprintln!(
            "certificate: {}\nhub CA:      {}",
            cert_path.display(),
            ca_path.display()
        );
    }
    Ok(())
}

fn request_once(socket: &Path, request: &AdminRequest) -> Result<AdminResponse> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach hearthd at {} (is it running? --socket or HEARTH_SOCKET chooses the socket)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.is_empty() {
        bail!("hearthd closed the connection without answering");
    }
    serde_json::from_str(&answer).context("hearthd's answer is not valid JSON")
}

/// `/run/hearth/admin.sock` when the packaged service runs, else the
/// socket inside the default data dir.
fn default_socket() -> PathBuf {
    let packaged = PathBuf::from("/run/hearth/admin.sock");
    if packaged.exists() {
        packaged
    } else {
        PathBuf::from("hearth-data/admin.sock")
    }
}

fn make_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    Ok(())
}
