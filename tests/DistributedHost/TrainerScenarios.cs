namespace ComposerSharp.DistributedHost;

/// <summary>Scenarios that train with the Trainer on every rank.</summary>
public static class TrainerScenarios
{
    /// <summary>The scenario called <paramref name="name"/>.</summary>
    public static Action<ScenarioContext> Find(string name) => name switch
    {
        _ => throw new ArgumentException($"Unknown scenario '{name}'; expected collectives, throw, hang or a Trainer scenario."),
    };
}
