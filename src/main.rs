//! The `simian` binary: parse the command line, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use simian::cli::{self, Cli, Command};
use simian::config::{Config, LoadError};

fn main() -> ExitCode {
    // Before any thread: a process started by an upgrade takes its sockets.
    simian::runtime::handover::adopt_from_env();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One clear line per cause, never a backtrace.
            eprintln!("simian: {e:#}");
            simian::runtime::handover::report_failure(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::Explain {
            client,
            cookie,
            url,
        }) => {
            let config = load(&cli)?;
            let Some(config) = config else {
                return Ok(ExitCode::from(1));
            };
            print!(
                "{}",
                cli::explain::explain(&config, url, *client, cookie.as_deref())
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Forward(args)) => {
            let (config, text) = match cli::forward::config(args) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("simian forward: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            if cli.check {
                print!("{}", cli::check::route_table(&config));
                return Ok(ExitCode::SUCCESS);
            }
            simian::log::set_level(&cli.log_level).map_err(anyhow::Error::msg)?;
            // SIGHUP re-reads "the file": give it one, holding these arguments.
            let path =
                std::env::temp_dir().join(format!("simian-forward-{}.conf", std::process::id()));
            std::fs::write(&path, text)?;
            let opts = simian::runtime::RunOptions {
                threads: cli.threads,
                pid_file: cli.pid_file.clone(),
                pin_cpus: cli.pin_cpus,
                upgrade: true,
            };
            let r = simian::runtime::run(config, &path, &opts);
            let _ = std::fs::remove_file(&path);
            r.map(|_| ExitCode::SUCCESS)
        }
        Some(Command::Ctl { socket, command }) => {
            match cli::ctl::socket_path(socket.as_deref(), &cli.config) {
                Ok(path) => Ok(cli::ctl::run(&path, command)),
                Err(e) => {
                    eprintln!("simian ctl: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Some(Command::Demo {
            listen,
            tls,
            tls_listen,
        }) => {
            simian::demo::run(listen, tls.then_some(tls_listen.as_str())).map(|_| ExitCode::SUCCESS)
        }
        None if cli.check => {
            let Some(config) = load(&cli)? else {
                return Ok(ExitCode::from(1));
            };
            print!("{}", cli::check::route_table(&config));
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let Some(config) = load(&cli)? else {
                return Ok(ExitCode::from(1));
            };
            simian::log::set_level(&cli.log_level).map_err(anyhow::Error::msg)?;
            let opts = simian::runtime::RunOptions {
                threads: cli.threads,
                pid_file: cli.pid_file.clone(),
                pin_cpus: cli.pin_cpus,
                upgrade: true,
            };
            simian::runtime::run(config, &cli.config, &opts).map(|_| ExitCode::SUCCESS)
        }
    }
}

/// Load the configuration and print its warnings; `None` after printing its errors.
fn load(cli: &Cli) -> anyhow::Result<Option<Config>> {
    match Config::load(&cli.config) {
        Ok(config) => {
            for w in &config.warnings {
                eprint!("{w}");
            }
            Ok(Some(config))
        }
        Err(LoadError::Invalid(errors)) => {
            eprintln!("{errors}");
            simian::runtime::handover::report_failure(&errors.to_string());
            Ok(None)
        }
        Err(e @ LoadError::Read { .. }) => Err(anyhow::anyhow!("{e}")),
    }
}
