fn main() {
    print!("{}", regbridge::crd::crd_yaml());
}
