//! The pest parser generated from `grammar/proxy.pest`.

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/proxy.pest"]
pub struct ConfigParser;

/// Human names for the grammar rules that appear in "expected ..." messages.
pub fn describe(rule: &Rule) -> String {
    let s = match rule {
        Rule::EOI => "end of line",
        Rule::duration => "a duration (500ms, 30s, 5m, or bare seconds)",
        Rule::count => "a whole number",
        Rule::number => "a whole number",
        Rule::unix_addr | Rule::ipv6_addr | Rule::host_port | Rule::host | Rule::ipv6_host => {
            "an address (1.2.3.4:80, [::1]:80, host:80 or unix:/path)"
        }
        Rule::weight => "weight=N",
        Rule::unix_path => "a socket path after `unix:`",
        Rule::port => "a port number",
        Rule::pattern => "a regular expression",
        Rule::entry_name => "a name (letters, digits, '_', '-', '.')",
        Rule::path => "a file path",
        Rule::url_path => "a URL path starting with '/'",
        Rule::cookie_name => "a cookie name",
        Rule::cidr => "an address or network (127.0.0.0/8, ::1)",
        Rule::balancer => "a balancer name",
        Rule::health_check_kind => "off, tcp or a URL path",
        Rule::sticky_kind => "table or hash",
        Rule::mode_kind => "http or tcp",
        Rule::splice_kind => "auto, on or off",
        Rule::tls_flag | Rule::proxy_flag => "tls, proxy or end of line",
        Rule::words => "a value",
        Rule::host_name => "a host name (example.com, *.example.com or *)",
        Rule::proxy_version => "v1 or v2",
        Rule::tls_version => "a TLS version (1.2 or 1.3)",
        Rule::client_auth_kind => "off, optional or required",
        Rule::on_off => "on or off",
        Rule::tls_addr => "an address after `tls:` (host:443 or [::1]:443)",
        Rule::off => "off",
        Rule::auto => "auto",
        Rule::section => "a section header",
        Rule::defaults_section | Rule::entry_section | Rule::unknown_section => {
            "PROXY_DEFAULTS or PROXY_ENTRY"
        }
        Rule::unknown_directive | Rule::key_word => "a key",
        other => return format!("{other:?}"),
    };
    s.to_string()
}
