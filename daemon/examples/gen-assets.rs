//! gen-assets: writes the man pages and shell completions the Debian
//! package ships, generated from the binaries' own clap definitions.
//!
//!     cargo run -p hearth-daemon --example gen-assets [-- OUT_DIR]
//!
//! OUT_DIR defaults to `<workspace>/target/assets`, where daemon/Cargo.toml's
//! `[package.metadata.deb]` assets point (whatever CARGO_TARGET_DIR says).
//! It writes `hearthd.8.gz`, `hearth.1.gz`, `hearth-device.1.gz` and
//! `completions/{NAME.bash, _NAME, NAME.fish}` for each binary.

use std::error::Error;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Arg, CommandFactory};
use clap_complete::Shell;
use flate2::write::GzEncoder;
use flate2::Compression;
use hearth_daemon::cli;

fn main() -> Result<(), Box<dyn Error>> {
    let out = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("the crate has no parent directory")?
            .join("target/assets"),
    };
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    // `about` is the crate's description in --help; a man page's NAME
    // line wants what each command is.
    let pages = [
        (
            cli::hearthd::Args::command(),
            "8",
            "the Hearth home hub daemon: mutual-TLS MQTT for a household's toys and phones",
            HEARTHD_EXTRA,
        ),
        (
            cli::hearth::Cli::command(),
            "1",
            "administer a Hearth hub: members, devices, grants, pairing, audit log",
            HEARTH_EXTRA,
        ),
        (
            hearth_device::cli::Cli::command(),
            "1",
            "the Hearth reference device: pair with a hub, run, renew",
            DEVICE_EXTRA,
        ),
    ];
    for (cmd, section, about, extra) in pages {
        let mut cmd = cmd.about(about).long_about(None);
        cmd.build();
        let name = cmd.get_name().to_owned();
        let page = out.join(format!("{name}.{section}.gz"));
        fs::write(&page, gzip(&man_page(&cmd, section, extra)?)?)?;
        println!("{}", page.display());
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let path = clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

/// clap_mangen's page, plus a COMMANDS section with every subcommand's
/// usage and arguments (clap_mangen lists only their names), plus the
/// hand-written sections clap knows nothing about (files, environment).
fn man_page(cmd: &clap::Command, section: &str, extra: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("Hearth")
        .source(format!("Hearth {}", env!("CARGO_PKG_VERSION")));
    let mut roff = Vec::new();
    man.render_title(&mut roff)?;
    man.render_name_section(&mut roff)?;
    man.render_synopsis_section(&mut roff)?;
    man.render_description_section(&mut roff)?;
    man.render_options_section(&mut roff)?;
    if cmd.has_subcommands() {
        roff.extend_from_slice(b".SH COMMANDS\n");
        for sub in cmd.get_subcommands() {
            commands(sub, &mut roff)?;
        }
    }
    roff.extend_from_slice(extra.as_bytes());
    man.render_version_section(&mut roff)?;
    Ok(roff)
}

/// One `.SS` per subcommand, recursively.
fn commands(cmd: &clap::Command, out: &mut Vec<u8>) -> Result<(), Box<dyn Error>> {
    if cmd.get_name() == "help" {
        return Ok(());
    }
    let path = cmd.get_bin_name().unwrap_or(cmd.get_name());
    writeln!(out, ".SS \"{}\"", escape(path))?;
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage:").trim();
    writeln!(out, ".B {}", escape(usage))?;
    writeln!(out, ".br")?;
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        writeln!(out, "{}", escape(&about.to_string()))?;
    }
    for arg in cmd.get_arguments().filter(|a| shown(a)) {
        writeln!(out, ".TP")?;
        writeln!(out, "{}", escape(&arg_label(arg)))?;
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            writeln!(out, "{}", escape(&help.to_string()))?;
        }
    }
    for sub in cmd.get_subcommands() {
        commands(sub, out)?;
    }
    Ok(())
}

fn shown(arg: &Arg) -> bool {
    !arg.is_hide_set()
        && !arg.is_global_set()
        && !matches!(arg.get_id().as_str(), "help" | "version")
}

/// `--label <LABEL>`, `--json`, `<NAME>`.
fn arg_label(arg: &Arg) -> String {
    let value = arg
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", arg.get_id().as_str().to_uppercase()));
    match arg.get_long() {
        None => value,
        Some(long) if arg.get_action().takes_values() => format!("--{long} {value}"),
        Some(long) => format!("--{long}"),
    }
}

/// Text for roff: backslashes and hyphens escaped, no line read as a request.
fn escape(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            if line.starts_with(['.', '\'']) {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// gzip -9 without a timestamp, as Debian wants man pages (reproducible).
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(data)?;
    gz.finish()
}

const HEARTHD_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
0
Stopped on SIGTERM or SIGINT after draining connections; or the command succeeded.
.TP
1
Something the hub needs did not start.
.TP
70
The embedded broker stopped routing (the service manager restarts the hub).
.TP
78
The configuration or the data directory cannot be used (not retried by the unit).
.SH ENVIRONMENT
.TP
.B STATE_DIRECTORY
The data directory when neither \fB\-\-data\-dir\fR nor \fBdata_dir\fR is given (systemd sets it to /var/lib/hearth); else ./hearth\-data.
.TP
.B RUNTIME_DIRECTORY
The admin socket is $RUNTIME_DIRECTORY/admin.sock unless \fB[admin] socket\fR is set (systemd sets it to /run/hearth).
.TP
.B NOTIFY_SOCKET
Where READY=1 and STOPPING=1 are sent (systemd Type=notify).
.TP
.B HEARTH_LOG
Log filter (default \fIinfo\fR), e.g. \fIinfo,rumqttd=debug\fR. Logs go to standard output, one line per event.
.TP
.B NO_COLOR
Set to keep colours out of the log even on a terminal.
.SH FILES
.TP
.I /etc/hearth/hearth.toml
The configuration; every setting is listed there, commented, at its default (\fBhearthd print\-default\-config\fR prints it).
.TP
.I /var/lib/hearth
The hub's certificate authority, certificates and database. Back it up; keep the backup secret.
.TP
.I /run/hearth/admin.sock
The admin socket, for members of group \fBhearth\-admin\fR.
.SH "SEE ALSO"
.BR hearth (1),
.BR hearth\-device (1),
.BR systemctl (1),
.BR journalctl (1)
"#;

const HEARTH_EXTRA: &str = r#".SH ENVIRONMENT
.TP
.B HEARTH_SOCKET
The admin socket, as \fB\-\-socket\fR.
.SH FILES
.TP
.I /run/hearth/admin.sock
The hub's admin socket (the default path). Only members of group \fBhearth\-admin\fR may use it: \fBsudo adduser\fR \fIUSER\fR \fBhearth\-admin\fR, then log in again.
.SH "SEE ALSO"
.BR hearthd (8),
.BR hearth\-device (1)
"#;

const DEVICE_EXTRA: &str = r#".SH ENVIRONMENT
.TP
.B HEARTH_DEVICE_DIR
The device's directory, as \fB\-\-dir\fR.
.SH "SEE ALSO"
.BR hearth (1),
.BR hearthd (8)
"#;
