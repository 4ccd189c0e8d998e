/// The service version.
public enum GradserveVersion {
    /// Semantic version of this build.
    public static let current = "0.1.0"
}
