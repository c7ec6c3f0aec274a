using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// The Trainer clears gradients as Composer does (<c>optimizer.zero_grad(set_to_none=True)</c>, PyTorch's default since
/// 2.0): a parameter that gets no gradient in a step has none, so the optimizer skips it.
/// </summary>
[TestFixture]
public class GradientClearingTests
{
    /// <summary>A head whose second branch is used until <see cref="UseBranch"/> is turned off (as a block StochasticDepth drops in some steps).</summary>
    private sealed class HeadWithUnusedBranch : nn.Module<Tensor, Tensor>
    {
        private readonly Linear used;
        private readonly Linear unused;

        public HeadWithUnusedBranch()
            : base(nameof(HeadWithUnusedBranch))
        {
            used = nn.Linear(8, 3);
            unused = nn.Linear(8, 3);
            RegisterComponents();
        }

        public Linear Unused => unused;

        public bool UseBranch { get; set; } = true;

        public override Tensor forward(Tensor input) => UseBranch ? used.call(input) + unused.call(input) : used.call(input);
    }

    [Test]
    public void AParameterWithoutAGradientInAStepIsNotMovedByAdamWAndNoGradientIsKeptAfterFit()
    {
        var model = TestData.Model();
        var head = new HeadWithUnusedBranch();
        model.ReplaceHead(head);
        Tensor? afterFirstStep = null;
        var switchOff = new ActionCallback(Event.BatchEnd, s =>
        {
            if (s.Timestamp.Batch == 1)
            {
                afterFirstStep = head.Unused.weight!.detach().clone().DetachFromDisposeScope();
                head.UseBranch = false;
            }
        });
        Tensor usedBefore = model.parameters().First().detach().clone();
        using var trainer = TestData.Trainer(model, TestData.Loader(32, 8), "4ba", callbacks: new[] { switchOff },
            optimizerFactory: p => torch.optim.AdamW(p, lr: 0.1, weight_decay: 0.5));
        trainer.Fit();

        // Gradients zeroed in place instead of cleared would leave the branch a zero gradient in steps 2-4, and AdamW
        // would go on moving it: with the first step's moments and by decoupled weight decay (× (1 − lr·wd) per step).
        Assert.That(afterFirstStep, Is.Not.Null);
        Assert.That(head.Unused.weight!.detach().eq(afterFirstStep!).all().item<bool>(), Is.True,
            "a parameter without a gradient in a step must be skipped, as PyTorch's AdamW skips one whose grad is None");
        Assert.That(model.parameters().First().detach().eq(usedBefore).all().item<bool>(), Is.False, "the used parameters trained");
        Assert.That(model.parameters().Select(p => p.grad), Has.All.Null, "no gradient is kept after Fit");
    }
}
