using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using TrainerT = ComposerSharp.Trainer.Trainer;

// Commands run by the tests in a fresh process. Exit codes: 0 success, 3 the expected exception (its message on
// stdout), 2 unknown command.
switch (args.FirstOrDefault())
{
    case "late-deterministic-mode":
        // An MKL computation first, then a Trainer asking for deterministic mode: it must refuse clearly.
        using (var scope = torch.NewDisposeScope())
        {
            _ = torch.nn.functional.linear(torch.randn(8, 8), torch.randn(3, 8));
        }

        try
        {
            using var trainer = new TrainerT(new Probe(), device: "cpu", progressBar: false, deterministicMode: true);
            Console.WriteLine("no exception");
            return 0;
        }
        catch (InvalidOperationException ex)
        {
            Console.WriteLine(ex.Message);
            return 3;
        }

    default:
        Console.Error.WriteLine($"unknown command '{string.Join(' ', args)}'; expected: late-deterministic-mode");
        return 2;
}

/// <summary>A one-parameter model, enough to construct a Trainer.</summary>
internal sealed class Probe : ComposerModel
{
    private readonly TorchSharp.Modules.Linear _linear = torch.nn.Linear(2, 1);

    public Probe()
        : base("probe") => RegisterComponents();

    public override Tensor forward(Batch batch) => _linear.call(batch["x"]);

    public override Tensor Loss(Tensor outputs, Batch batch) => outputs.mean();
}
