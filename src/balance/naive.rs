//! `Naive` (Monkey): the first usable server counting from the client's source port
//! modulo the number of servers. It costs one division and keeps no state at all,
//! which is why Monkey offered it; it is unfair (ephemeral ports are not uniform
//! modulo n, and a dead server's share all falls on its successor), so it is for
//! when cost matters more than balance. Unix-socket clients have port 0 and always
//! start at the first server.

use super::{Balance, PickContext};

pub struct Naive;

impl Balance for Naive {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        if cx.servers.is_empty() {
            return None;
        }
        cx.first_usable_from(usize::from(cx.client_port) % cx.servers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Tried;
    use super::*;

    #[test]
    fn starts_at_port_mod_n() {
        let servers = servers(4);
        let tried = Tried::new(4);
        let mut c = cx(&servers, &tried);
        for port in [40000u16, 40001, 40002, 40003, 65535] {
            c.client_port = port;
            assert_eq!(Naive.pick(&c), Some(usize::from(port) % 4));
        }
        // Offline server: its clients go to the next one.
        offline(&servers[1]);
        c.client_port = 40001;
        assert_eq!(Naive.pick(&c), Some(2));
        c.client_port = 40003;
        assert_eq!(Naive.pick(&c), Some(3));
    }

    #[test]
    fn skips_and_none() {
        check_skips(&Naive);
        check_all_offline(&Naive);
    }
}
