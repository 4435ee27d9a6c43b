//! `c2f`: train, evaluate and apply Coarse2Fine ([`c2f_train::cli`]).

fn main() {
    c2f_train::cli::main()
}
